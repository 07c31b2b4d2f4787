"""Hydra search-path plugin: makes qsam2_ext's SAM2 configs (``configs/qsam2/...``) visible to sam2's
``build_sam2`` / ``build_sam2_video_predictor``, exactly like the configs packaged with sam2."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class QSAM2ConfigSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="qsam2_ext", path="pkg://qsam2_ext.sam2")

"""Dataset readers against the masks the fixtures wrote, and the bad-sample policy on broken files."""

import json
import logging
import os

import numpy as np
import pytest
from helpers import rle, save_id_png, save_jpeg, write_coco, write_folder, write_sa1b, write_video
from PIL import Image

from qsam2_ext.sam2.data import BadSample, BadSampleLog, DatasetError, open_dataset
from qsam2_ext.sam2.data.files import decode_segmentation


def test_sa1b_reads_rle_masks_exactly(tmp_path):
    truth = write_sa1b(tmp_path, n=2, objects=3)
    reader = open_dataset("sa1b", str(tmp_path))
    assert len(reader) == 2 and reader.labeled and not reader.video and reader.problems == []
    sample = reader.load(1)
    assert sample.num_frames == 1 and sample.frames[0].shape == (48, 64, 3) and sample.frames[0].dtype == np.uint8
    np.testing.assert_array_equal(sample.masks[0], np.stack(truth["sa_1"]))
    assert sample.object_ids == [100, 101, 102] and sample.source.endswith("sa_1.json")
    subset = reader.load(1, np.random.default_rng(0), max_objects=2)
    assert subset.num_objects == 2 and set(subset.object_ids) <= {100, 101, 102}


def test_sa1b_lists_unpaired_files(tmp_path):
    write_sa1b(tmp_path, n=2)
    os.remove(tmp_path / "sa_0.json")
    (tmp_path / "sa_9.json").write_text("{}")
    reader = open_dataset("sa1b", str(tmp_path))
    assert len(reader) == 1
    assert sorted(r for _, r in reader.problems) == ["annotation without image", "image without annotation JSON"]


def test_coco_polygons_rle_and_crowd(tmp_path):
    truth = write_coco(tmp_path, n=2)
    reader = open_dataset("coco", str(tmp_path / "images"), annotations=str(tmp_path / "instances.json"))
    sample = reader.load(0)
    rle_mask, rect = truth["000.jpg"]
    assert sample.object_ids == [1, 2]  # the crowd annotation (id 3) is not an instance
    np.testing.assert_array_equal(sample.masks[0, 0], rle_mask)
    # pycocotools rasterises the polygon (5,4)-(20,15) onto exactly the pixels of the half-open rectangle
    np.testing.assert_array_equal(sample.masks[0, 1], rect)


def test_decode_segmentation_forms_agree():
    mask = np.zeros((10, 12), bool)
    mask[2:6, 3:9] = True
    compressed = rle(mask)
    from pycocotools import mask as mask_utils

    uncompressed = {"size": [10, 12], "counts": _uncompressed_counts(mask)}
    np.testing.assert_array_equal(decode_segmentation(compressed, 10, 12), mask)
    np.testing.assert_array_equal(decode_segmentation(uncompressed, 10, 12), mask)
    assert mask_utils.area(mask_utils.frPyObjects(uncompressed, 10, 12)) == 24  # the counts encode the mask
    with pytest.raises(ValueError, match="12x10"):
        decode_segmentation(compressed, 12, 10)


def _uncompressed_counts(mask):
    """COCO's uncompressed RLE: run lengths of the column-major flattening, starting with zeros."""
    flat = mask.flatten(order="F").astype(int)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def test_video_reader_whole_sequences_and_clips(tmp_path):
    truth = write_video(tmp_path, videos=2, frames=5, objects=2)
    reader = open_dataset("video", str(tmp_path))
    assert reader.video and len(reader) == 2 and reader.name(1) == "video1"
    sample = reader.load(0)
    assert sample.num_frames == 5 and sample.object_ids == [1, 2]
    np.testing.assert_array_equal(sample.masks, np.stack([truth["video0"] == 1, truth["video0"] == 2], axis=1))
    clips = open_dataset("video", str(tmp_path), clip_length=3)
    starts = set()
    for seed in range(20):
        clip = clips.load(1, np.random.default_rng(seed))
        assert clip.num_frames == 3
        start = int(os.path.basename(clip.frame_paths[0])[:5])
        starts.add(start)
        np.testing.assert_array_equal(clip.masks[:, 0], truth["video1"][start:start + 3] == 1)
    assert starts == {0, 1, 2}


def test_video_frames_sort_numerically(tmp_path):
    write_video(tmp_path, videos=1, frames=3, names=["2", "10", "1"])
    sample = open_dataset("video", str(tmp_path)).load(0)
    assert [os.path.basename(p) for p in sample.frame_paths] == ["1.jpg", "2.jpg", "10.jpg"]


def test_folder_reader_is_recursive_and_unlabeled(tmp_path):
    write_folder(tmp_path, n=3)
    (tmp_path / "notes.txt").write_text("not an image")
    reader = open_dataset("folder", str(tmp_path))
    assert len(reader) == 3 and not reader.labeled
    sample = reader.load(2)
    assert sample.masks is None and sample.num_objects == 0 and sample.frames[0].shape == (48, 64, 3)


def test_open_dataset_validates_before_reading(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset format"):
        open_dataset("voc", str(tmp_path))
    with pytest.raises(ValueError, match="annotations file"):
        open_dataset("coco", str(tmp_path))
    with pytest.raises(ValueError, match="video dataset"):
        open_dataset("sa1b", str(tmp_path), clip_length=3)
    with pytest.raises(DatasetError, match="not found"):
        open_dataset("sa1b", str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="JPEGImages"):
        open_dataset("video", str(tmp_path))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read COCO annotations"):
        open_dataset("coco", str(tmp_path), annotations=str(tmp_path / "bad.json"))
    with pytest.raises(DatasetError, match="no image file"):
        open_dataset("folder", str(tmp_path))


# -- corrupt and inconsistent samples ------------------------------------------------------------------------

def test_unreadable_image_is_a_bad_sample_naming_the_file(tmp_path):
    write_sa1b(tmp_path, n=2)
    (tmp_path / "sa_1.jpg").write_bytes(b"\xff\xd8 truncated")
    reader = open_dataset("sa1b", str(tmp_path))
    with pytest.raises(BadSample, match="unreadable image") as err:
        reader.load(1)
    assert err.value.source == str(tmp_path / "sa_1.jpg")
    reader.load(0)  # the others still load


def test_mask_image_size_mismatch_is_rejected(tmp_path):
    write_sa1b(tmp_path, n=1)
    record = json.loads((tmp_path / "sa_0.json").read_text())
    record["annotations"][0]["segmentation"] = rle(np.ones((40, 64), bool))
    record["image"].pop("height")
    (tmp_path / "sa_0.json").write_text(json.dumps(record))
    with pytest.raises(BadSample, match="bad segmentation"):
        open_dataset("sa1b", str(tmp_path)).load(0)
    record["image"]["height"] = 50
    (tmp_path / "sa_0.json").write_text(json.dumps(record))
    with pytest.raises(BadSample, match="JSON says 64x50, image is 64x48"):
        open_dataset("sa1b", str(tmp_path)).load(0)


def test_coco_image_size_mismatch_is_rejected(tmp_path):
    write_coco(tmp_path, n=2)
    data = json.loads((tmp_path / "instances.json").read_text())
    data["images"][1]["width"] = 80
    (tmp_path / "instances.json").write_text(json.dumps(data))
    reader = open_dataset("coco", str(tmp_path / "images"), annotations=str(tmp_path / "instances.json"))
    reader.load(0)
    with pytest.raises(BadSample, match="annotations say 80x48, image is 64x48") as err:
        reader.load(1)
    assert err.value.source.endswith("001.jpg")


def test_empty_instance_is_dropped_and_reported(tmp_path):
    write_sa1b(tmp_path, n=1, objects=2)
    record = json.loads((tmp_path / "sa_0.json").read_text())
    record["annotations"][0]["segmentation"] = rle(np.zeros((48, 64), bool))
    (tmp_path / "sa_0.json").write_text(json.dumps(record))
    sample = open_dataset("sa1b", str(tmp_path)).load(0)
    assert sample.object_ids == [1] and sample.issues == ["instance 0: empty mask, dropped"]
    record["annotations"][1]["segmentation"] = rle(np.zeros((48, 64), bool))
    (tmp_path / "sa_0.json").write_text(json.dumps(record))
    with pytest.raises(BadSample, match="no non-empty instance mask"):
        open_dataset("sa1b", str(tmp_path)).load(0)


def test_video_inconsistencies(tmp_path):
    write_video(tmp_path, videos=3, frames=4)
    os.remove(tmp_path / "Annotations" / "video0" / "00002.png")  # unpaired frame: excluded at indexing
    Image.new("RGB", (64, 48)).save(tmp_path / "Annotations" / "video1" / "00001.png")  # colour, not ids
    save_jpeg(str(tmp_path / "JPEGImages" / "video2" / "00003.jpg"), np.zeros((40, 64, 3), np.uint8))
    reader = open_dataset("video", str(tmp_path))
    assert [n for n, _, _ in reader.videos] == ["video1", "video2"]
    assert reader.problems[0][0].endswith("video0") and "unpaired" in reader.problems[0][1]
    with pytest.raises(BadSample, match="indexed"):
        reader.load(0)
    with pytest.raises(BadSample, match="64x40"):
        reader.load(1)


def test_video_clip_longer_than_video_is_rejected(tmp_path):
    write_video(tmp_path, videos=1, frames=2)
    save_id_png(str(tmp_path / "Annotations" / "video0" / "00000.png"), np.zeros((48, 64)))
    reader = open_dataset("video", str(tmp_path), clip_length=3)
    with pytest.raises(BadSample, match="fewer than the clip length"):
        reader.load(0, np.random.default_rng(0))


def test_policy_skip_logs_once_and_counts(caplog):
    log = BadSampleLog("skip")
    with caplog.at_level(logging.WARNING, logger="qsam2_ext.data"):
        log.report("a.jpg", "unreadable")
        log.report("a.jpg", "unreadable")
        log.report("b.jpg", "empty")
    assert [r.getMessage() for r in caplog.records] == ["skipping bad sample a.jpg: unreadable",
                                                        "skipping bad sample b.jpg: empty"]
    assert log.to_json() == [{"source": "a.jpg", "reason": "unreadable", "count": 2},
                             {"source": "b.jpg", "reason": "empty", "count": 1}]


def test_policy_raise_stops_at_the_first_report():
    with pytest.raises(BadSample, match="a.jpg: unreadable"):
        BadSampleLog("raise").report("a.jpg", "unreadable")
    with pytest.raises(ValueError, match="policy"):
        BadSampleLog("ignore")

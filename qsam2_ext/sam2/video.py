"""SAM2's video predictor with a quantized memory bank, lazily read frames and a bounded streaming mode.

``QSAM2VideoPredictor`` is sam2's ``SAM2VideoPredictor`` (same weights, same ``init_state`` /
``add_new_points_or_box`` / ``add_new_mask`` / ``propagate_in_video`` calls, same algorithm) with three changes to
what it keeps:

* **Quantized memory bank** (``memory_bits=8`` or ``4``): every frame output sam2 stores in its inference state
  keeps its memory features (sam2: bfloat16) as packed codes with one grid per token (``"token"``: the channels of
  one position) or per channel (``"channel"``), and a tracked frame's mask logits (sam2: float32) as int8 codes with
  one grid per mask (``qsam2_ext.core.compact``). sam2 reads and writes the stored output as the dict it expects
  and gets float tensors back: values are dequantized when the memory attention (or an interaction) reads them.
  Prompted frames keep their mask logits in float (they are what the user sees and corrects).
* **Lazy frames**: ``init_state`` reads a folder or video file frame by frame when a frame is needed
  (``qsam2_ext.sam2.frames``), the same normalised tensors as sam2's loader, instead of loading every frame.
* **Streaming** (``init_state(..., streaming=True)``): after each tracked frame the state drops what no later frame
  of a forward pass reads: outputs older than the memory window (``num_maskmem - 1`` frames, times the memory
  stride) lose their memory features and mask logits, and those older than the object-pointer window
  (``max_obj_ptrs_in_encoder - 1`` frames) go; conditioning (prompted) frames stay. Memory then stays flat in the
  video's length, and the masks are those of the interactive mode (what is dropped is never read). Streaming
  tracks forward only and takes prompts on frames not yet tracked; re-prompting a tracked frame and reverse
  tracking need the interactive mode (``streaming=False``, the default).

Build it with ``build_video_predictor(config, checkpoint, memory_bits=8)``, or make one from a video predictor
built elsewhere (float or quantized weights) with ``QSAM2VideoPredictor.wrap``.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Optional, Sequence

import torch
from sam2.sam2_video_predictor import SAM2VideoPredictor

from ..core.compact import COMPACT_BITS, CompactTensor, compact
from .frames import open_frames

MEMORY_GRIDS = {"token": (1,), "channel": (2, 3)}  # grid axes of (B, C, H, W) memory features
MASK_GRID, MASK_BITS = (2, 3), 8  # one int8 grid per (B, 1, h, w) mask of logits
_TARGET = "qsam2_ext.sam2.video.QSAM2VideoPredictor"


def check_memory(bits: Optional[int], granularity: str = "token") -> tuple[Optional[int], str]:
    if bits is not None and (isinstance(bits, bool) or bits not in COMPACT_BITS):
        raise ValueError(f"memory bits must be one of {COMPACT_BITS} or None (float), got {bits!r}")
    if granularity not in MEMORY_GRIDS:
        raise ValueError(f"memory granularity must be one of {sorted(MEMORY_GRIDS)}, got {granularity!r}")
    return bits, granularity


class CompactFrameOutput(MutableMapping):
    """One stored frame output (sam2's dict of ``maskmem_features``, ``pred_masks``, ``obj_ptr``, ...) holding the
    memory features and, if ``masks``, the mask logits as codes; reading a key gives the float tensor back."""

    def __init__(self, out: dict, bits: int, granularity: str, masks: bool):
        self._data: dict = {}
        self._grids = {"maskmem_features": (bits, MEMORY_GRIDS[granularity])}
        if masks:
            self._grids["pred_masks"] = (MASK_BITS, MASK_GRID)
        self.update(out)

    def __getitem__(self, key):
        value = self._data[key]
        return value.dequantize() if isinstance(value, CompactTensor) else value

    def __setitem__(self, key, value) -> None:
        if key in self._grids and isinstance(value, torch.Tensor):
            value = compact(value, *self._grids[key])
        self._data[key] = value

    def __delitem__(self, key) -> None:
        del self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def stored(self, key):
        """What is kept for ``key`` (a ``CompactTensor`` for quantized entries)."""
        return self._data[key]


class QSAM2VideoPredictor(SAM2VideoPredictor):
    """``SAM2VideoPredictor`` with a quantized, bounded memory bank (see the module docstring)."""

    def __init__(self, memory_bits: Optional[int] = None, memory_granularity: str = "token", **kwargs):
        super().__init__(**kwargs)
        self.memory_bits, self.memory_granularity = check_memory(memory_bits, memory_granularity)

    @classmethod
    def wrap(cls, predictor: SAM2VideoPredictor, memory_bits: Optional[int] = None,
             memory_granularity: str = "token") -> "QSAM2VideoPredictor":
        """A ``QSAM2VideoPredictor`` sharing ``predictor``'s modules, parameters and settings (nothing is copied;
        ``predictor`` stays as it was)."""
        if not isinstance(predictor, SAM2VideoPredictor):
            raise TypeError(f"wrap needs a SAM2VideoPredictor (build_model(..., video=True)), got "
                            f"{type(predictor).__name__}")
        out = cls.__new__(cls)
        out.__dict__.update(predictor.__dict__)
        for name in ("_parameters", "_buffers", "_modules"):  # own containers of the same tensors and modules
            setattr(out, name, dict(getattr(predictor, name)))
        out.memory_bits, out.memory_granularity = check_memory(memory_bits, memory_granularity)
        return out

    # --- state -------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def init_state(self, video_path, offload_video_to_cpu: bool = False, offload_state_to_cpu: bool = False,
                   async_loading_frames: bool = False, *, streaming: bool = False):
        """sam2's ``init_state`` (its arguments, the same state keys) with frames read lazily from a folder or video
        file (or a frames object of ``qsam2_ext.sam2.frames``): ``offload_video_to_cpu`` and
        ``async_loading_frames`` are moot (frames stay on disk until used). ``streaming``: see the module."""
        is_path = isinstance(video_path, (str, os.PathLike))
        frames = open_frames(os.fspath(video_path), self.image_size) if is_path else video_path
        if frames.image_size != self.image_size:
            raise ValueError(f"the frames are prepared for {frames.image_size}² inputs, the model takes "
                             f"{self.image_size}²")
        device = self.device
        state = {
            "images": frames, "num_frames": len(frames), "offload_video_to_cpu": True,
            "offload_state_to_cpu": offload_state_to_cpu, "video_height": frames.video_height,
            "video_width": frames.video_width, "device": device,
            "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
            "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {}, "constants": {},
            "obj_id_to_idx": {}, "obj_idx_to_id": {}, "obj_ids": [], "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
            "streaming": streaming, "last_tracked": -1,
        }
        self._get_image_feature(state, frame_idx=0, batch_size=1)  # as sam2: warm up on frame 0
        return state

    def _run_single_frame_inference(self, inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame,
                                    point_inputs, mask_inputs, reverse, run_mem_encoder, prev_sam_mask_logits=None):
        out, pred_masks = super()._run_single_frame_inference(
            inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame, point_inputs, mask_inputs,
            reverse, run_mem_encoder, prev_sam_mask_logits)
        if self.memory_bits is not None:
            tracked = point_inputs is None and mask_inputs is None
            out = CompactFrameOutput(out, self.memory_bits, self.memory_granularity, masks=tracked)
        return out, pred_masks

    @torch.inference_mode()
    def reset_state(self, inference_state):
        super().reset_state(inference_state)
        inference_state["last_tracked"] = -1

    # --- streaming ---------------------------------------------------------------------------------------------

    def _check_prompt_frame(self, state, frame_idx) -> None:
        if not 0 <= frame_idx < state["num_frames"]:
            raise ValueError(f"frame {frame_idx} is past the end: the video has {state['num_frames']} frames "
                             f"(0..{state['num_frames'] - 1})")
        if state.get("streaming") and frame_idx <= state["last_tracked"]:
            raise ValueError(f"streaming: frame {frame_idx} was already tracked (up to {state['last_tracked']}); "
                             "re-prompting a tracked frame needs init_state(..., streaming=False)")

    @torch.inference_mode()
    def add_new_points_or_box(self, inference_state, frame_idx, obj_id, *args, **kwargs):
        self._check_prompt_frame(inference_state, frame_idx)
        return super().add_new_points_or_box(inference_state, frame_idx, obj_id, *args, **kwargs)

    @torch.inference_mode()
    def add_new_mask(self, inference_state, frame_idx, obj_id, mask):
        self._check_prompt_frame(inference_state, frame_idx)
        return super().add_new_mask(inference_state, frame_idx, obj_id, mask)

    @torch.inference_mode()
    def propagate_in_video(self, inference_state, start_frame_idx=None, max_frame_num_to_track=None,
                           reverse=False):
        streaming, last = inference_state.get("streaming", False), inference_state.get("last_tracked", -1)
        if streaming:
            if reverse:
                raise ValueError("streaming tracks forward only: reverse tracking needs init_state(..., "
                                 "streaming=False)")
            if start_frame_idx is None and last >= 0:
                start_frame_idx = last + 1  # go on where the last call stopped
            if start_frame_idx is not None and start_frame_idx <= last:
                raise ValueError(f"streaming: frames up to {last} were tracked and evicted; go on from "
                                 f"{last + 1} or use init_state(..., streaming=False)")
        for frame_idx, obj_ids, masks in super().propagate_in_video(inference_state, start_frame_idx,
                                                                    max_frame_num_to_track, reverse):
            inference_state["last_tracked"] = max(inference_state.get("last_tracked", -1), frame_idx)
            if streaming:
                self.evict(inference_state, frame_idx)
            yield frame_idx, obj_ids, masks

    def windows(self) -> tuple[int, int]:
        """How many frames back the next frame reads memories and object pointers (upper bounds)."""
        memory = (self.num_maskmem - 1) * max(1, self.memory_temporal_stride_for_eval)
        pointers = self.max_obj_ptrs_in_encoder - 1 if self.use_obj_ptrs_in_encoder else 0
        return memory, pointers

    def evict(self, inference_state, frame_idx: int) -> None:
        """Drop what no frame after ``frame_idx`` reads in a forward pass (conditioning frames stay).

        Frame ``f + 1`` reads the memories of frames ``>= f + 1 - (num_maskmem - 1) * stride`` (sam2's
        ``_prepare_memory_conditioned_features``) and the pointers of frames ``>= f + 1 - (max_obj_ptrs - 1)``."""
        memory, pointers = self.windows()
        memory_from, pointer_from = frame_idx + 1 - memory, frame_idx + 1 - pointers
        for obj_idx, outputs in inference_state["output_dict_per_obj"].items():
            tracked = outputs["non_cond_frame_outputs"]
            for t in [t for t in tracked if t < memory_from]:
                if t < pointer_from:
                    del tracked[t]
                elif not isinstance(tracked[t], _PointerOnly):
                    tracked[t] = _PointerOnly(tracked[t]["obj_ptr"], tracked[t]["object_score_logits"])
            frames_tracked = inference_state["frames_tracked_per_obj"][obj_idx]
            for t in [t for t in frames_tracked if t < min(memory_from, pointer_from)]:
                del frames_tracked[t]


class _PointerOnly(dict):
    """What streaming keeps of a frame past the memory window: its object pointer (and score)."""

    def __init__(self, obj_ptr, object_score_logits):
        super().__init__(obj_ptr=obj_ptr, object_score_logits=object_score_logits, maskmem_features=None,
                         maskmem_pos_enc=None, pred_masks=None)


def state_bytes(obj) -> int:
    """Bytes of the tensors an inference state holds (frames read lazily count nothing; shared tensors and
    expanded views count once, by storage)."""
    seen: set = set()

    def walk(x) -> int:
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            key = storage.data_ptr()
            if key in seen or x.device.type == "meta":
                return 0
            seen.add(key)
            return storage.nbytes()
        if isinstance(x, CompactTensor):
            return walk(x.codes) + walk(x.center) + walk(x.step)
        if isinstance(x, CompactFrameOutput):
            return sum(walk(x.stored(k)) for k in x)
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        return 0

    return walk(obj)


def build_video_predictor(config: str, checkpoint: Optional[str] = None, *, memory_bits: Optional[int] = None,
                          memory_granularity: str = "token", device: str = "cpu", image_size: Optional[int] = None,
                          overrides: Sequence[str] = ()) -> QSAM2VideoPredictor:
    """``build_model(config, checkpoint, video=True)`` as a ``QSAM2VideoPredictor`` (sam2's video-predictor
    settings, our memory bank)."""
    from .models import build_model

    check_memory(memory_bits, memory_granularity)
    model = build_model(config, checkpoint, device=device, video=True, image_size=image_size,
                        overrides=[*overrides, f"++model._target_={_TARGET}"])
    model.memory_bits, model.memory_granularity = memory_bits, memory_granularity
    return model

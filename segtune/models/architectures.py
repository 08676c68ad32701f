"""One registry of what segtune needs to know per segmentation architecture (docs/models.md).

An `Architecture` holds, for one transformers `model_type`: the offline names built from a config
with random weights (full-size configs as the Hub checkpoints have them), the config field its
own loss reads the ignore index from, its processor class and how segtune sizes it, the input
constraint, and whether the SegFormer head folding applies. models/loading.py, training/optim.py,
training/run.py, inference/ and exporting/ ask here instead of testing model types themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SegtuneError
from . import mask_configs

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# Parameters that are no weights of a layer: position tables, tokens and layer scales take no
# weight decay in MMSeg's BEiT/Swin/ConvNeXt configs (decay would pull them to 0, not regularise).
NO_DECAY_NAMES = ("cls_token", "mask_token", "position_embeddings", "absolute_position_embeddings",
                  "relative_position_bias_table", "lambda_1", "lambda_2", "layer_scale_parameter",
                  "lambda1", "register_tokens", "level_embed")  # DINOv2/v3 and EoMT's layer scale and registers


@dataclass(frozen=True)
class Architecture:
    model_type: str
    title: str
    processor: str  # transformers class name (the PIL variant: torchvision is optional)
    ignore_field: str = "semantic_loss_ignore_index"  # the config field the model's own loss reads
    fixed_size: bool = False  # True: the model takes config.image_size squared only (see input_size)
    fixed_backbones: tuple = ()  # backbones (model_type) that fix it: the backbone's image_size
    foldable: bool = False  # models/folding.py applies
    auxiliary_head: bool = False  # has `use_auxiliary_head` / `auxiliary_loss_weight`
    processor_kwargs: dict = field(default_factory=dict)  # what segtune sets on top of its scale
    # "pixel": per-pixel logits (AutoModelForSemanticSegmentation); "mask": mask classification
    # (AutoModelForUniversalSegmentation), read out as semantic scores by models/masks.py
    family: str = "pixel"
    windows: bool = False  # EoMT: short side resized to its square input, run on square windows (slide mode)
    offline: dict = field(default_factory=dict)  # offline name -> config builder (random weights)
    notes: str = ""


def _segformer(name):
    def build():
        from transformers import SegformerConfig

        return SegformerConfig(**MIT_CONFIGS[name])
    return build


def _upernet(backbone: str, **kwargs):
    def build():
        from transformers import ConvNextConfig, SwinConfig, UperNetConfig

        stages = ["stage1", "stage2", "stage3", "stage4"]
        if backbone == "convnext":
            bb = ConvNextConfig(out_features=stages, drop_path_rate=0.3, **kwargs)
            channels = bb.hidden_sizes[2]
        else:
            bb = SwinConfig(out_features=stages, drop_path_rate=0.3, window_size=7, image_size=512, **kwargs)
            channels = bb.embed_dim * 4
        # openmmlab/upernet-*: a 512-wide head, an auxiliary FCN head on stage 3 at weight 0.4
        return UperNetConfig(backbone_config=bb, hidden_size=512, auxiliary_in_channels=channels,
                             auxiliary_channels=256, use_auxiliary_head=True, auxiliary_loss_weight=0.4)
    return build


def _beit(model: str):
    def build():
        from transformers import BeitConfig, Data2VecVisionConfig

        if model == "beit":  # microsoft/beit-base-finetuned-ade-640-640
            return BeitConfig(image_size=640, use_relative_position_bias=True, use_layer_scale=True,
                              layer_scale_init_value=0.1, drop_path_rate=0.1, use_auxiliary_head=True,
                              auxiliary_loss_weight=0.4, out_indices=[3, 5, 7, 11])
        return Data2VecVisionConfig(image_size=224, use_relative_position_bias=True, use_layer_scale=True,
                                    layer_scale_init_value=0.1, use_auxiliary_head=True, auxiliary_loss_weight=0.4,
                                    out_indices=[3, 5, 7, 11])  # facebook/data2vec-vision-base
    return build


def _dpt(hybrid: bool):
    def build():
        from transformers import DPTConfig

        if hybrid:  # Intel/dpt-hybrid-midas's backbone (BiT + ViT-B/16) with a segmentation head
            return DPTConfig(is_hybrid=True, image_size=384, hidden_size=768, num_hidden_layers=12,
                             num_attention_heads=12, backbone_out_indices=[2, 5, 8, 11], readout_type="project",
                             neck_hidden_sizes=[256, 512, 768, 768], use_auxiliary_head=True)
        return DPTConfig(image_size=384, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=4096, backbone_out_indices=[5, 11, 17, 23],
                         neck_hidden_sizes=[256, 512, 1024, 1024], use_batch_norm_in_fusion_residual=True,
                         use_auxiliary_head=True)  # Intel/dpt-large-ade
    return build


def _mobilevit(hidden, neck, expand=4.0):
    def build():
        from transformers import MobileViTConfig

        return MobileViTConfig(image_size=512, hidden_sizes=hidden, neck_hidden_sizes=neck, expand_ratio=expand,
                               aspp_out_channels=256, atrous_rates=[6, 12, 18])  # apple/deeplabv3-mobilevit-*
    return build


def _mobilevitv2(width):
    def build():
        from transformers import MobileViTV2Config

        return MobileViTV2Config(image_size=512, width_multiplier=width, aspp_out_channels=512)
    return build


def _mobilenet_v2():
    from transformers import MobileNetV2Config

    return MobileNetV2Config(image_size=513, depth_multiplier=1.0, output_stride=8,
                             first_layer_is_expansion=True, finegrained_output=True)  # google/deeplabv3_mobilenet_v2_1.0_513


_SEGFORMER_SIZES = {
    "mit-b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256), "mit-b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "mit-b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768), "mit-b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "mit-b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768), "mit-b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768),
}
MIT_CONFIGS = {name: dict(hidden_sizes=h, depths=d, decoder_hidden_size=dec) for name, (h, d, dec) in _SEGFORMER_SIZES.items()}
_SHORT_SIDE = {"do_reduce_labels": False}
_FIXED = {"do_center_crop": False, "do_reduce_labels": False}

ARCHITECTURES = {a.model_type: a for a in [
    Architecture("segformer", "SegFormer", "SegformerImageProcessorPil", foldable=True, processor_kwargs=_SHORT_SIDE,
                 offline={name: _segformer(name) for name in _SEGFORMER_SIZES}),
    Architecture("upernet", "UperNet (ConvNeXt, Swin)", "SegformerImageProcessorPil", ignore_field="loss_ignore_index",
                 auxiliary_head=True, fixed_backbones=("swin",), processor_kwargs=_SHORT_SIDE, offline={
                     "upernet-convnext-tiny": _upernet("convnext", depths=[3, 3, 9, 3],
                                                       hidden_sizes=[96, 192, 384, 768]),
                     "upernet-convnext-small": _upernet("convnext", depths=[3, 3, 27, 3],
                                                        hidden_sizes=[96, 192, 384, 768]),
                     "upernet-swin-tiny": _upernet("swin", embed_dim=96, depths=[2, 2, 6, 2],
                                                   num_heads=[3, 6, 12, 24]),
                     "upernet-swin-small": _upernet("swin", embed_dim=96, depths=[2, 2, 18, 2],
                                                    num_heads=[3, 6, 12, 24])},
                 notes="ConvNeXt: any size. Swin pads to whole windows from the input size as constants, so "
                       "its ONNX graph has one input size: the square of its backbone's image_size"),
    Architecture("dpt", "DPT", "DPTImageProcessorPil", fixed_size=True, auxiliary_head=True,
                 processor_kwargs={"keep_aspect_ratio": False, "ensure_multiple_of": 1, "do_pad": False,
                                   "do_reduce_labels": False},
                 offline={"dpt-large": _dpt(False), "dpt-hybrid": _dpt(True)},
                 notes="its neck folds the tokens back into a square grid: square input of config.image_size"),
    Architecture("beit", "BEiT", "BeitImageProcessorPil", fixed_size=True, auxiliary_head=True,
                 processor_kwargs=_FIXED, offline={"beit-base": _beit("beit")},
                 notes="relative position bias sized for config.image_size"),
    Architecture("data2vec-vision", "Data2Vec-Vision", "BeitImageProcessorPil", fixed_size=True, auxiliary_head=True,
                 processor_kwargs=_FIXED, offline={"data2vec-vision-base": _beit("data2vec")},
                 notes="BEiT's architecture and processor"),
    Architecture("mobilevit", "MobileViT (DeepLabV3)", "MobileViTImageProcessorPil", fixed_size=True,
                 processor_kwargs={**_FIXED, "do_flip_channel_order": False}, offline={
                     "mobilevit-small": _mobilevit([144, 192, 240], [16, 32, 64, 96, 128, 160, 640]),
                     "mobilevit-x-small": _mobilevit([96, 120, 144], [16, 32, 48, 64, 80, 96, 384]),
                     "mobilevit-xx-small": _mobilevit([64, 80, 96], [16, 16, 24, 48, 64, 80, 320], 2.0)},
                 notes="its unfolding reads the feature size as constants: the ONNX graph has one input size"),
    Architecture("mobilevitv2", "MobileViTV2 (DeepLabV3)", "MobileViTImageProcessorPil", fixed_size=True,
                 processor_kwargs={**_FIXED, "do_flip_channel_order": False},
                 offline={"mobilevitv2-1.0": _mobilevitv2(1.0), "mobilevitv2-0.5": _mobilevitv2(0.5)},
                 notes="as MobileViT"),
    Architecture("mobilenet_v2", "MobileNetV2 (DeepLabV3)", "MobileNetV2ImageProcessorPil", fixed_size=True,
                 processor_kwargs={"do_center_crop": False, "do_reduce_labels": False},
                 offline={"deeplabv3-mobilenet-v2": _mobilenet_v2},
                 notes="TensorFlow 'same' padding computed from the input size: the ONNX graph has one input size"),
]}
_MASK = {"do_reduce_labels": False, "size_divisor": 0}  # segtune builds the targets and never pads
_EOMT = {"do_split_image": True, "do_pad": True}  # transformers' own semantic inference: square windows
ARCHITECTURES.update({a.model_type: a for a in [
    Architecture("eomt", "EoMT (DINOv2)", "EomtImageProcessorPil", ignore_field="", fixed_size=True, windows=True,
                 family="mask", processor_kwargs=_EOMT, offline=mask_configs.EOMT,
                 notes="its position embeddings fix the input square: images are resized to that short side and "
                       "run window by window (slide mode), as transformers' EoMT processor splits them"),
    Architecture("eomt_dinov3", "EoMT (DINOv3)", "EomtImageProcessorPil", ignore_field="", fixed_size=True,
                 windows=True, family="mask", processor_kwargs=_EOMT, offline=mask_configs.EOMT_DINOV3,
                 notes="as EoMT: its token grid is fixed by config.image_size"),
    Architecture("mask2former", "Mask2Former (Swin)", "Mask2FormerImageProcessorPil", ignore_field="ignore_value",
                 family="mask", processor_kwargs=_MASK, offline=mask_configs.MASK2FORMER,
                 notes="multi-scale deformable attention in its pixel decoder"),
    Architecture("maskformer", "MaskFormer (Swin)", "MaskFormerImageProcessorPil", ignore_field="", family="mask",
                 processor_kwargs=_MASK, offline=mask_configs.MASKFORMER),
]})
ARCHITECTURES["upernet"].offline.update(mask_configs.UPERNET_VIT)
# Refused in one line: what it would need that segtune cannot give it
REFUSED = {"oneformer": "OneFormer needs a task text input and a class-info file from the Hub for every image; "
                        "segtune does not support it: train Mask2Former or EoMT instead"}
OFFLINE_NAMES = {name: a for a in ARCHITECTURES.values() for name in a.offline}


def get(model_type: str) -> Architecture | None:
    """The registry's entry for a config's model_type (None: an architecture segtune has no facts on)."""
    return ARCHITECTURES.get(model_type)


def of_config(config) -> Architecture | None:
    return get(getattr(config, "model_type", ""))


def family(config) -> str:
    """"mask" for a mask classifier (by its registry entry, or any AutoModelForUniversalSegmentation type), else "pixel"."""
    arch = of_config(config)
    if arch is not None:
        return arch.family
    from transformers.models.auto.modeling_auto import MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES as universal

    return "mask" if getattr(config, "model_type", "") in universal else "pixel"


def check_supported(config, name) -> None:
    """A model type segtune refuses (REFUSED) stops in one line naming the model."""
    reason = REFUSED.get(getattr(config, "model_type", ""))
    if reason:
        raise SegtuneError(f"{name}: {reason}")


def auto_class(config):
    """The transformers Auto class that loads the model of `config` for segtune's use."""
    import transformers

    kind = "Universal" if family(config) == "mask" else "Semantic"
    return getattr(transformers, f"AutoModelFor{kind}Segmentation")


def of_processor(processor) -> Architecture | None:
    """The fixed-size architectures have processors of their own, so a processor names its constraint;
    SegFormer's processor (also UperNet's) says nothing of the architecture, which is size-free."""
    name = (getattr(processor, "processor_class", None) or type(processor).__name__).removesuffix("Pil").removesuffix("Fast")
    for arch in ARCHITECTURES.values():
        if arch.processor.removesuffix("Pil") == name and arch.fixed_size:
            return arch
    return None


def runner_config(runner):
    """The config of what a Segmenter's runner runs: a torch model's, or the config.json that `segtune export`
    writes beside model.onnx, read as plain JSON (None for a bare ONNX file without it)."""
    model = getattr(runner, "model", None)
    if model is not None and hasattr(model, "config"):
        return model.config
    path = getattr(runner, "path", None)
    if path is not None and (Path(path).parent / "config.json").is_file():
        import json
        from types import SimpleNamespace

        try:  # as JSON: transformers' AutoConfig is not needed (nor its import) to find a size
            return json.loads((Path(path).parent / "config.json").read_text(),
                              object_hook=lambda d: SimpleNamespace(**d))
        except (OSError, ValueError):
            return None
    return None


def runner_input_size(runner) -> int | None:
    """input_size of what a Segmenter's runner runs (runner_config)."""
    config = runner_config(runner)
    try:
        return input_size(config) if config is not None else None
    except (TypeError, AttributeError):
        return None


def offline_config(name: str):
    """The full-size config of an offline name; an unknown name lists the known ones."""
    if name not in OFFLINE_NAMES:
        raise SegtuneError(f"{name}: not an offline architecture (known: {', '.join(OFFLINE_NAMES)})")
    builder = OFFLINE_NAMES[name].offline[name]
    return builder()


def label_kwargs(arch: Architecture | None, labels, ignore_index: int) -> dict:
    """Config fields of the labels and of the ignore index, the field the architecture's own loss reads."""
    kwargs = dict(num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id)
    field_name = arch.ignore_field if arch else "semantic_loss_ignore_index"
    if field_name:  # EoMT and MaskFormer have none: segtune's targets leave ignored pixels out (models/masks.py)
        kwargs[field_name] = ignore_index
    return kwargs


def input_size(config) -> int | None:
    """The side of the square input a fixed-size architecture takes, None for any size."""
    arch = of_config(config)
    backbone = getattr(config, "backbone_config", None)
    if arch is not None and backbone is not None and getattr(backbone, "model_type", None) in arch.fixed_backbones:
        size = backbone.image_size
    elif arch is None or not arch.fixed_size:
        return None
    else:
        size = config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def make_processor(arch: Architecture | None, config, base_size: int, mean, std):
    """The architecture's own processor type with segtune's scale: short side `base_size`, aspect
    kept, or the fixed square the model takes; `pipeline("image-segmentation")` loads it as is."""
    import transformers

    arch = arch or ARCHITECTURES["segformer"]
    cls = getattr(transformers, arch.processor)
    side = input_size(config)
    if arch.windows:  # the short side to the square's side; windows of it (transformers: split, pad)
        size = {"shortest_edge": side, "longest_edge": None}
    elif arch.family == "mask":  # Mask2Former's processor needs a long-side cap: MMSeg's ADE20K scale (2048, 512)
        size = {"shortest_edge": base_size, "longest_edge": 4 * base_size}
    else:
        size = {"height": side, "width": side} if side else {"shortest_edge": base_size}
    kwargs = dict(arch.processor_kwargs)
    if arch.model_type.startswith("mobilevit"):  # rescaled to [0, 1], not normalised, as Apple trained it
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return cls(size=size, image_mean=list(mean), image_std=list(std), **kwargs)

"""Building or loading a segmentation model and its image processor, sized to the labels."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.labels import LabelSet
from ..errors import SegtuneError
from ..hub import check_hub
from .architectures import (
    MIT_CONFIGS,
    OFFLINE_NAMES,
    auto_class,
    check_supported,
    label_kwargs,
    make_processor,
    of_config,
    offline_config,
)
from .masks import original_query_init

log = logging.getLogger("segtune")

# The six Mix Transformer encoders of the SegFormer paper (and the other offline names: architectures.py).
MIT_ARCHITECTURES = MIT_CONFIGS  # name -> SegformerConfig fields
DEFAULT_MODEL = "nvidia/mit-b0"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _label_kwargs(labels: LabelSet, ignore_index: int, config=None) -> dict:
    return label_kwargs(of_config(config) if config is not None else None, labels, ignore_index)


def load_model(name: str, labels: LabelSet, ignore_index: int = 255, trust_remote_code: bool = False):
    """An offline architecture name builds random weights; a Hub id or folder is loaded and re-headed.
    The ignore index goes to the config field the architecture's own loss reads (architectures.py)."""
    from transformers import AutoConfig

    if name in OFFLINE_NAMES:
        log.warning(
            "segtune: building %s from its config with RANDOM weights (no pretrained checkpoint); "
            "expect far lower accuracy than fine-tuning a pretrained checkpoint",
            name,
        )
        config = offline_config(name)
        for key, value in _label_kwargs(labels, ignore_index, config).items():
            setattr(config, key, value)
        model = auto_class(config).from_config(config)
        original_query_init(model)
        return model
    check_hub(name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        check_supported(config, name)
        for key, value in _label_kwargs(labels, ignore_index, config).items():
            setattr(config, key, value)  # on the config: UperNet's __init__ takes no unknown keyword
        return auto_class(config).from_pretrained(
            name,
            config=config,
            ignore_mismatched_sizes=True,  # a checkpoint with another head is re-headed
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as e:
        hint = f" (offline architectures: {', '.join(OFFLINE_NAMES)})" if not Path(name).exists() else ""
        raise SegtuneError(f"{name}: cannot load model: {str(e).splitlines()[0]}{hint}") from None


def load_saved_model(model_dir: str | Path, trust_remote_code: bool = False):
    """A saved model (folder or Hub id) through the Auto class of its family: per-pixel or mask classifier."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        check_supported(config, model_dir)
        return auto_class(config).from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise SegtuneError(f"{model_dir}: cannot load model: {str(e).splitlines()[0]}") from None


def load_processor(name_or_dir: str | Path):
    """The processor saved with a model, as the PIL variant of its class (torchvision is optional)."""
    import transformers
    from transformers import AutoImageProcessor

    check_hub(name_or_dir)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_dir)
        pil = getattr(transformers, type(processor).__name__.removesuffix("Fast").removesuffix("Pil") + "Pil", None)
        if pil is not None and not isinstance(processor, pil):
            return pil.from_pretrained(name_or_dir)
        return processor
    except OSError as e:
        raise SegtuneError(f"{name_or_dir}: cannot load image processor: {str(e).splitlines()[0]}") from None


def training_processor(model_name: str, base_size: int, config=None):
    """The processor to train with and save: the architecture's own processor type (architectures.py),
    short side resized to `base_size` with the aspect kept, or the fixed square the model takes.

    Mean and std come from the checkpoint's own processor when there is one.
    """
    arch = of_config(config) if config is not None else None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if model_name not in OFFLINE_NAMES:
        try:
            source = load_processor(model_name)
            mean, std = list(source.image_mean), list(source.image_std)
        except SegtuneError:
            log.warning("segtune: %s has no image processor; using ImageNet mean/std", model_name)
    return make_processor(arch, config, base_size, mean, std)

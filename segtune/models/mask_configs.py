"""Full-size configs, for the offline names, of the mask classifiers (EoMT on DINOv2 and DINOv3,
Mask2Former and MaskFormer on Swin) and of UperNet on DINOv2/DINOv3 ViT backbones, at the sizes of
their Hub checkpoints (docs/models.md lists them with the published ADE20K mIoU).

Backbones are built from config objects: a config given `backbone="name"` would ask the Hub.
"""

from __future__ import annotations

# name -> (hidden size, layers, heads): the ViT sizes of DINOv2 and DINOv3 (patch 14 and 16)
VIT_SIZES = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
# Swin sizes: (embed_dim, depths, heads, window, pretraining image size), facebook/mask2former-swin-*-ade-semantic
SWIN_SIZES = {"tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224), "small": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
              "base": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384),
              "large": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384)}
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def eomt(size: str, dinov3: bool = False, image_size: int = 512, queries: int = 100):
    """EoMT on a DINOv2 (patch 14 -> 16 as the EoMT checkpoints re-patch it) or DINOv3 ViT: the last 4
    blocks take the queries; tue-mps/ade20k_semantic_eomt_large_512: 100 queries, 512x512."""
    def build():
        from transformers import EomtConfig, EomtDinov3Config

        hidden, layers, heads = VIT_SIZES[size]
        common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, image_size=image_size,
                      patch_size=16, num_blocks=4, num_queries=queries, num_register_tokens=4, layerscale_value=1e-5)
        if dinov3:
            return EomtDinov3Config(intermediate_size=4 * hidden, **common)
        return EomtConfig(**common)
    return build


def _swin(size: str, maskformer: bool = False):
    from transformers import MaskFormerSwinConfig, SwinConfig

    embed, depths, heads, window, image = SWIN_SIZES[size]
    cls = MaskFormerSwinConfig if maskformer else SwinConfig
    return cls(embed_dim=embed, depths=depths, num_heads=heads, window_size=window, image_size=image,
               drop_path_rate=0.3, out_features=STAGES)


def mask2former(size: str):
    def build():
        from transformers import Mask2FormerConfig

        return Mask2FormerConfig(backbone_config=_swin(size), num_queries=100)  # 9 decoder layers + 1, as the Hub's
    return build


def maskformer(size: str):
    def build():
        from transformers import DetrConfig, MaskFormerConfig

        return MaskFormerConfig(backbone_config=_swin(size, maskformer=True),
                                decoder_config=DetrConfig(num_queries=100, decoder_layers=6, encoder_layers=0))
    return build


def upernet_vit(size: str, dinov3: bool = False):
    """UperNet on four evenly spaced blocks of a DINOv2/DINOv3 ViT (their last quarter ends), reshaped to
    maps; an auxiliary FCN head on the third at weight 0.4, as segtune's other UperNets."""
    def build():
        from transformers import Dinov2Config, DINOv3ViTConfig, UperNetConfig

        hidden, layers, heads = VIT_SIZES[size]
        outs = [f"stage{layers * k // 4}" for k in (1, 2, 3, 4)]
        if dinov3:
            backbone = DINOv3ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                       intermediate_size=4 * hidden, num_register_tokens=4, layerscale_value=1e-5,
                                       out_features=outs, reshape_hidden_states=True, drop_path_rate=0.1)
        else:
            backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                    image_size=518, layerscale_value=1e-5, out_features=outs,
                                    reshape_hidden_states=True, drop_path_rate=0.1)
        return UperNetConfig(backbone_config=backbone, hidden_size=512, auxiliary_in_channels=hidden,
                             auxiliary_channels=256, use_auxiliary_head=True, auxiliary_loss_weight=0.4)
    return build


EOMT = {f"eomt-{s}-512": eomt(s) for s in VIT_SIZES}
EOMT_DINOV3 = {f"eomt-dinov3-{s}-512": eomt(s, dinov3=True) for s in VIT_SIZES}
MASK2FORMER = {f"mask2former-swin-{s}": mask2former(s) for s in SWIN_SIZES}
MASKFORMER = {f"maskformer-swin-{s}": maskformer(s) for s in SWIN_SIZES}
UPERNET_VIT = {**{f"upernet-dinov2-{s}": upernet_vit(s) for s in VIT_SIZES},
               **{f"upernet-dinov3-{s}": upernet_vit(s, dinov3=True) for s in VIT_SIZES}}

"""Tiny configs of each architecture in segtune.architectures (hidden sizes 8-32, 1-2 layers), for the tests."""


def tiny_config(kind: str):
    import transformers as t

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if kind == "segformer":
        return t.SegformerConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
                                 decoder_hidden_size=32)
    if kind == "upernet-convnext":
        bb = t.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=stages)
        return t.UperNetConfig(backbone_config=bb, hidden_size=16, auxiliary_in_channels=24, auxiliary_channels=8,
                               use_auxiliary_head=True, auxiliary_loss_weight=0.4)
    if kind == "upernet-swin":
        bb = t.SwinConfig(image_size=32, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=2,
                          out_features=stages)
        return t.UperNetConfig(backbone_config=bb, hidden_size=16, auxiliary_in_channels=32, auxiliary_channels=8,
                               use_auxiliary_head=True, auxiliary_loss_weight=0.4)
    if kind == "dpt":
        return t.DPTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                           intermediate_size=32, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                           fusion_hidden_size=16, head_in_index=-1, use_auxiliary_head=True)
    if kind in ("beit", "data2vec-vision"):
        cls = t.BeitConfig if kind == "beit" else t.Data2VecVisionConfig
        return cls(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                   intermediate_size=32, out_indices=[0, 1, 2, 3], use_relative_position_bias=True,
                   use_auxiliary_head=True, auxiliary_channels=8, auxiliary_loss_weight=0.4, pool_scales=[1, 2, 3, 6],
                   use_layer_scale=True)
    if kind == "mobilevit":
        return t.MobileViTConfig(image_size=64, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 8, 8, 8, 16, 32],
                                 num_attention_heads=2, mlp_ratio=1.0, expand_ratio=1.0, aspp_out_channels=16,
                                 atrous_rates=[1, 2, 3])
    if kind == "mobilevitv2":
        return t.MobileViTV2Config(image_size=64, width_multiplier=0.125, aspp_out_channels=16, atrous_rates=[1, 2, 3])
    if kind == "mobilenet_v2":
        return t.MobileNetV2Config(image_size=32, depth_multiplier=0.1, output_stride=8)
    raise KeyError(kind)


KINDS = ("segformer", "upernet-convnext", "upernet-swin", "dpt", "beit", "data2vec-vision", "mobilevit", "mobilevitv2",
         "mobilenet_v2")


def save_tiny(path, kind: str, num_labels: int = 3):
    """A tiny model of `kind` saved as a local folder (config and random weights), as a user's checkpoint."""
    import torch
    from transformers import AutoModelForSemanticSegmentation

    torch.manual_seed(0)
    config = tiny_config(kind)
    config.num_labels = num_labels
    AutoModelForSemanticSegmentation.from_config(config).save_pretrained(path)
    return path

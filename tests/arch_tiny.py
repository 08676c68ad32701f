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
    if kind in ("upernet-dinov2", "upernet-dinov3"):
        vit = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, out_features=["stage1", "stage2",
                   "stage3", "stage4"], reshape_hidden_states=True)
        bb = (t.Dinov2Config(image_size=32, patch_size=8, **vit) if kind == "upernet-dinov2"
              else t.DINOv3ViTConfig(patch_size=8, intermediate_size=32, num_register_tokens=1, **vit))
        return t.UperNetConfig(backbone_config=bb, hidden_size=16, auxiliary_in_channels=16, auxiliary_channels=8,
                               use_auxiliary_head=True, auxiliary_loss_weight=0.4)
    return tiny_mask_config(kind)


def tiny_mask_config(kind: str):
    """Tiny mask classifiers: EoMT (DINOv2, DINOv3) on 32x32 squares, Mask2Former and MaskFormer on Swin."""
    import transformers as t

    stages = ["stage1", "stage2", "stage3", "stage4"]
    vit = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8, num_blocks=2,
               num_queries=6, num_register_tokens=1, train_num_points=256)
    if kind == "eomt":
        return t.EomtConfig(**vit)
    if kind == "eomt_dinov3":
        return t.EomtDinov3Config(intermediate_size=32, **vit)
    if kind == "mask2former":
        bb = t.SwinConfig(image_size=32, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=2,
                          out_features=stages)
        return t.Mask2FormerConfig(backbone_config=bb, feature_size=32, mask_feature_size=32, hidden_dim=32,
                                   encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                                   dim_feedforward=32, num_queries=6, train_num_points=256)
    if kind == "maskformer":
        # 3 stages (stride 16): its DETR decoder tells queries apart only by the lowest-resolution features,
        # which at stride 32 are 1 or 2 tokens in a test-sized image, so every query would come out alike
        bb = t.MaskFormerSwinConfig(image_size=32, embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 2],
                                    window_size=2, out_features=stages[:3])
        # no dropout: it alone told the queries apart in training, so evaluation saw them alike again
        decoder = t.DetrConfig(d_model=32, encoder_layers=0, decoder_layers=2, decoder_attention_heads=2,
                               encoder_attention_heads=2, decoder_ffn_dim=32, encoder_ffn_dim=32, num_queries=6, dropout=0.0)
        return t.MaskFormerConfig(backbone_config=bb, fpn_feature_size=32, mask_feature_size=32, decoder_config=decoder)
    raise KeyError(kind)


KINDS = ("segformer", "upernet-convnext", "upernet-swin", "dpt", "beit", "data2vec-vision", "mobilevit", "mobilevitv2",
         "mobilenet_v2", "upernet-dinov2", "upernet-dinov3")
MASK_KINDS = ("eomt", "eomt_dinov3", "mask2former", "maskformer")


def save_tiny(path, kind: str, num_labels: int = 3):
    """A tiny model of `kind` saved as a local folder (config and random weights), as a user's checkpoint."""
    import torch

    from segtune.models.architectures import auto_class
    from segtune.models.masks import original_query_init

    torch.manual_seed(0)
    config = tiny_config(kind)
    config.num_labels = num_labels
    model = auto_class(config).from_config(config)
    original_query_init(model)  # as segtune's offline names are built (MaskFormer's queries)
    model.save_pretrained(path)
    return path

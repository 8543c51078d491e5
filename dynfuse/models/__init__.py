"""DFF and CASENet models, builders by name, shareable folders (``save_pretrained`` /
``from_pretrained``) and loading of the authors' checkpoints."""

from .edge import DFF, MODEL_OPTIONS, CASENet, CheckpointedAdaptiveLearner, EdgeModel
from .export import export_onnx, fusion_backend
from .official import (
    convert_official_state_dict,
    describe_official_state_dict,
    load_official_casenet,
    load_official_dff,
    to_official_state_dict,
)
from .pretrained import (
    build_model_from_config,
    from_pretrained,
    init_from_pretrained,
    load_pretrained_weights,
    model_build_config,
    push_to_hub,
    read_pretrained_config,
    save_pretrained,
)
from .registry import (
    TABLE1,
    Table1Row,
    create_backbone,
    create_model,
    create_table1_model,
    list_backbones,
    list_models,
    register_model,
)

__all__ = [
    "CASENet",
    "DFF",
    "MODEL_OPTIONS",
    "TABLE1",
    "build_model_from_config",
    "from_pretrained",
    "init_from_pretrained",
    "load_pretrained_weights",
    "model_build_config",
    "push_to_hub",
    "read_pretrained_config",
    "save_pretrained",
    "CheckpointedAdaptiveLearner",
    "EdgeModel",
    "Table1Row",
    "convert_official_state_dict",
    "create_backbone",
    "create_model",
    "create_table1_model",
    "describe_official_state_dict",
    "export_onnx",
    "fusion_backend",
    "list_backbones",
    "list_models",
    "load_official_casenet",
    "load_official_dff",
    "register_model",
    "to_official_state_dict",
]

"""What the core knows about MXNet Gluon, declared without importing mxnet."""

from tunespec.backend_api import FrameworkFacts

FACTS = FrameworkFacts(
    name="mxnet",
    framework="mxnet",
    backend="tunespec.backends.mxnet.backend:BACKEND",
    extra="mxnet",
    model_type="an mxnet.gluon.Block",
    optimizer_type="a gluon.Trainer",
    file_suffixes=(".params",),
    # Gluon spells norm leaves its own way; canonical names use the other spelling.
    leaf_spellings={"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                    "moving_var": "running_var"},
    # 'portable' runs the update rules every backend shares (torch's formulas: lr outside the momentum
    # buffer, Adam's epsilon after the bias correction) on MXNet's fused operators (the default:
    # float32 hyper-parameters), 'portable-exact' in full precision (float64 parity runs), 'native'
    # MXNet's own rules.
    semantics=("portable", "native", "portable-exact"),
    former_semantics={"torch": "portable", "torch-exact": "portable-exact"},
    # Trainer and Optimizer arguments beyond the update rule's own, with the kind of value each takes.
    optimizer_options={"clip_gradient": "optional_positive", "rescale_grad": "positive",
                       "multi_precision": "boolean", "kvstore": "name_or_object",
                       "update_on_kvstore": "optional_boolean", "compression_params": "compression",
                       "lazy_update": "boolean"},
    zoos=("gluoncv",),
    server_role_variable="DMLC_ROLE",
    # Dense (units, in_units) and NC* convolutions (channels, in_channels / groups, *kernel) have
    # torch's layout, and Gluon's own Xavier reads them the same way.
    weight_layouts={"default": ("out", "in", "spatial")},
)

"""gradx: composable, jit-compiled optimizers for JAX, with hyperparameters in the state.

Every optimizer and block is an ``optax.GradientTransformationExtraArgs``; this file is the
whole public API.
"""

from optax import GradientTransformation as GradientTransformation
from optax import GradientTransformationExtraArgs as GradientTransformationExtraArgs
from optax import apply_updates as apply_updates
from optax import chain as chain

from gradx import callbacks as callbacks
from gradx import checkpoint as checkpoint
from gradx import compat as compat
from gradx import losses as losses
from gradx import schedules as schedules
from gradx import search_space as search_space
from gradx._optimizers.adafactor import adafactor as adafactor
from gradx._optimizers.adam import adam as adam
from gradx._optimizers.adam import adamax as adamax
from gradx._optimizers.adam import adamw as adamw
from gradx._optimizers.adam import amsgrad as amsgrad
from gradx._optimizers.adam import nadam as nadam
from gradx._optimizers.adam import nesterov_ema as nesterov_ema
from gradx._optimizers.adaptive import adadelta as adadelta
from gradx._optimizers.adaptive import adagrad as adagrad
from gradx._optimizers.adaptive import rmsprop as rmsprop
from gradx._optimizers.adaptive import scale_by_adadelta as scale_by_adadelta
from gradx._optimizers.adopt import adopt as adopt
from gradx._optimizers.adopt import scale_by_adopt as scale_by_adopt
from gradx._optimizers.factored import clip_by_block_rms as clip_by_block_rms
from gradx._optimizers.factored import scale_by_factored_rms as scale_by_factored_rms
from gradx._optimizers.factored import scale_by_param_block_rms as scale_by_param_block_rms
from gradx._optimizers.groups import ParamGroupsState as ParamGroupsState
from gradx._optimizers.groups import param_groups as param_groups
from gradx._optimizers.layerwise import lamb as lamb
from gradx._optimizers.lookahead import lookahead as lookahead
from gradx._optimizers.lookahead import lookahead_fitted as lookahead_fitted
from gradx._optimizers.lookahead import lookahead_momentum as lookahead_momentum
from gradx._optimizers.matrices import MuonDimensionNumbers as MuonDimensionNumbers
from gradx._optimizers.matrices import scale_by_shape as scale_by_shape
from gradx._optimizers.matrices import split_matrices as split_matrices
from gradx._optimizers.momentum import ema as ema
from gradx._optimizers.momentum import ema_momentum as ema_momentum
from gradx._optimizers.momentum import momentum as momentum
from gradx._optimizers.momentum import nesterov as nesterov
from gradx._optimizers.momentum import sgd as sgd
from gradx._optimizers.momentum import trace as trace
from gradx._optimizers.orthogonal import muon as muon
from gradx._optimizers.orthogonal import orthogonalize as orthogonalize
from gradx._optimizers.orthogonal import (
    orthogonalize_via_newton_schulz as orthogonalize_via_newton_schulz,
)
from gradx._optimizers.orthogonal import scale_by_muon as scale_by_muon
from gradx._optimizers.preconditioners import inf_norm as inf_norm
from gradx._optimizers.preconditioners import max_rms as max_rms
from gradx._optimizers.preconditioners import precondition as precondition
from gradx._optimizers.preconditioners import rms as rms
from gradx._optimizers.preconditioners import rss as rss
from gradx._optimizers.preconditioners import scale_by_bias_correction as scale_by_bias_correction
from gradx._optimizers.rectified import radam as radam
from gradx._optimizers.rectified import rectified as rectified
from gradx._optimizers.scaling import add_decayed_weights as add_decayed_weights
from gradx._optimizers.scaling import decoupled_weight_decay as decoupled_weight_decay
from gradx._optimizers.scaling import normalize as normalize
from gradx._optimizers.scaling import normalized_sgd as normalized_sgd
from gradx._optimizers.scaling import scale_by_learning_rate as scale_by_learning_rate
from gradx._optimizers.scaling import scale_by_trust_ratio as scale_by_trust_ratio
from gradx._optimizers.schedule_free import schedule_free as schedule_free
from gradx._optimizers.schedule_free import schedule_free_adamw as schedule_free_adamw
from gradx._optimizers.schedule_free import schedule_free_sgd as schedule_free_sgd
from gradx._optimizers.sign import lion as lion
from gradx._optimizers.sign import rprop as rprop
from gradx._optimizers.sign import scale_by_lion as scale_by_lion
from gradx._optimizers.sign import scale_by_rprop as scale_by_rprop
from gradx._protocol.access import hyperparams as hyperparams
from gradx._protocol.access import set_hyperparams as set_hyperparams
from gradx._protocol.checks import check_hyperparams as check_hyperparams
from gradx._protocol.declare import optimizer as optimizer
from gradx._protocol.dtypes import hyperparam_dtype as hyperparam_dtype
from gradx._protocol.placement import shard_like_params as shard_like_params
from gradx._protocol.placement import state_shardings as state_shardings
from gradx._protocol.quantized import SignedFloat8Moment as SignedFloat8Moment
from gradx._protocol.quantized import UnsignedFloat8Moment as UnsignedFloat8Moment
from gradx._protocol.rules import Rule as Rule
from gradx._protocol.state import HyperparamsState as HyperparamsState
from gradx._protocol.storage import RoundedMoment as RoundedMoment
from gradx._protocol.storage import decode_moments as decode_moments
from gradx._protocol.trees import TreeMismatchError as TreeMismatchError
from gradx._tools.effective_lr import effective_learning_rate as effective_learning_rate
from gradx._tools.flat import FlatState as FlatState
from gradx._tools.flat import flat as flat
from gradx._tools.schedule_free_eval import schedule_free_eval_params as schedule_free_eval_params
from gradx._training.fit import fit as fit
from gradx._training.mesh import fsdp as fsdp
from gradx._training.results import BestPoint as BestPoint
from gradx._training.results import FitResult as FitResult
from gradx._training.results import SweepResult as SweepResult
from gradx._training.search import search as search
from gradx._training.search_result import SearchResult as SearchResult
from gradx._training.sweep import sweep as sweep

__version__ = "0.1.0"

#: The optimizers, by name, in the order the CLI lists and races them.
OPTIMIZERS = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "ema_momentum": ema_momentum,
    "normalized_sgd": normalized_sgd,
    "rprop": rprop,
    "adagrad": adagrad,
    "rmsprop": rmsprop,
    "adadelta": adadelta,
    "adam": adam,
    "adamw": adamw,
    "amsgrad": amsgrad,
    "adamax": adamax,
    "nadam": nadam,
    "lookahead_momentum": lookahead_momentum,
    "lookahead_fitted": lookahead_fitted,
    # beyond the slides: what people train with today, each a chain of gradx's blocks
    "radam": radam,
    "adopt": adopt,
    "lion": lion,
    "lamb": lamb,
    "adafactor": adafactor,
    "muon": muon,
    "schedule_free_sgd": schedule_free_sgd,
    "schedule_free_adamw": schedule_free_adamw,
}

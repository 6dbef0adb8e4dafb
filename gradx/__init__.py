"""gradx: composable, jit-compiled optimizers for JAX, with hyperparameters in the state.

Every optimizer and block is an ``optax.GradientTransformationExtraArgs``; this file is the
whole public API.
"""

from optax import GradientTransformation as GradientTransformation
from optax import GradientTransformationExtraArgs as GradientTransformationExtraArgs
from optax import apply_updates as apply_updates
from optax import chain as chain
from optax import schedules as schedules

from gradx import callbacks as callbacks
from gradx import checkpoint as checkpoint
from gradx import compat as compat
from gradx import losses as losses
from gradx import search_space as search_space
from gradx._adaptive import adadelta as adadelta
from gradx._adaptive import adagrad as adagrad
from gradx._adaptive import adam as adam
from gradx._adaptive import adamax as adamax
from gradx._adaptive import adamw as adamw
from gradx._adaptive import amsgrad as amsgrad
from gradx._adaptive import inf_norm as inf_norm
from gradx._adaptive import max_rms as max_rms
from gradx._adaptive import nadam as nadam
from gradx._adaptive import nesterov_ema as nesterov_ema
from gradx._adaptive import precondition as precondition
from gradx._adaptive import rms as rms
from gradx._adaptive import rmsprop as rmsprop
from gradx._adaptive import rss as rss
from gradx._adaptive import scale_by_adadelta as scale_by_adadelta
from gradx._adaptive import scale_by_bias_correction as scale_by_bias_correction
from gradx._core import HyperparamsState as HyperparamsState
from gradx._core import Rule as Rule
from gradx._core import TreeMismatchError as TreeMismatchError
from gradx._core import add_decayed_weights as add_decayed_weights
from gradx._core import check_hyperparams as check_hyperparams
from gradx._core import decoupled_weight_decay as decoupled_weight_decay
from gradx._core import hyperparam_dtype as hyperparam_dtype
from gradx._core import hyperparams as hyperparams
from gradx._core import optimizer as optimizer
from gradx._core import scale_by_learning_rate as scale_by_learning_rate
from gradx._core import set_hyperparams as set_hyperparams
from gradx._flat import FlatState as FlatState
from gradx._flat import flat as flat
from gradx._gain import effective_learning_rate as effective_learning_rate
from gradx._lookahead import lookahead as lookahead
from gradx._lookahead import lookahead_fitted as lookahead_fitted
from gradx._lookahead import lookahead_momentum as lookahead_momentum
from gradx._momentum import ema as ema
from gradx._momentum import ema_momentum as ema_momentum
from gradx._momentum import momentum as momentum
from gradx._momentum import nesterov as nesterov
from gradx._momentum import normalize as normalize
from gradx._momentum import normalized_sgd as normalized_sgd
from gradx._momentum import sgd as sgd
from gradx._momentum import trace as trace
from gradx._search import SearchResult as SearchResult
from gradx._search import search as search
from gradx._sharding import fsdp as fsdp
from gradx._sharding import shard_like_params as shard_like_params
from gradx._sharding import state_shardings as state_shardings
from gradx._sign import rprop as rprop
from gradx._sign import scale_by_rprop as scale_by_rprop
from gradx.train import BestPoint as BestPoint
from gradx.train import FitResult as FitResult
from gradx.train import SweepResult as SweepResult
from gradx.train import fit as fit
from gradx.train import sweep as sweep

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
}

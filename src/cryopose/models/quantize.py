"""Post-training static int8 quantization of pose networks for CPU inference.

Both amortized pose networks of cryopose spend almost all of their inference time in
convolutions: the supervised regressor (:class:`cryopose.models.supervised.OrientationRegressor`,
``cryopose predict --int8`` and ``cryopose refine --int8``) and CryoPoseNet's encoder
(:class:`cryopose.models.encoders.CryoPoseNetEncoder`, ``cryopose predict --int8``).
:func:`quantize_int8` turns such a float network (batch norms already folded) into one whose
convolutions, linear layers, ReLUs and poolings compute on 8-bit integers: PyTorch FX graph mode
post-training static quantization (``torch.ao.quantization``), per-channel weight scales and
activation ranges observed on a calibration batch of particle images, with the default settings
of the CPU's quantized engine (``x86`` on x86, ``qnnpack`` on ARM).

The quantized module is for inference only (eval mode, CPU, no gradients) and is not saved in
checkpoints: quantize again after loading.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

__all__ = ["INT8_CALIBRATION_PARTICLES", "quantized_engine", "quantize_int8"]

#: Particles that ``cryopose predict --int8`` and ``refine --int8`` calibrate an int8 copy on.
INT8_CALIBRATION_PARTICLES = 256


def quantized_engine() -> str:
    """The quantized CPU engine :func:`quantize_int8` uses: ``"x86"``, ``"fbgemm"`` or ``"qnnpack"``.

    Raises:
        RuntimeError: This PyTorch build has no quantized CPU engine.
    """
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm", "qnnpack") if e in engines), None)
    if engine is None:
        raise RuntimeError(f"this PyTorch build has no quantized CPU engine (it offers {engines})")
    return engine


def quantize_int8(core: nn.Module, calibration_inputs: torch.Tensor, *, batch_size: int = 256) -> nn.Module:
    """An int8 copy of a float CPU network, calibrated on ``calibration_inputs``.

    Args:
        core: Float network taking one tensor ``(B, ...)`` (e.g. standardised images
            ``(B, 1, n, n)``), built of modules FX can trace (convolutions, linear layers,
            ReLU, pooling, flatten); batch norms should already be folded. Left unchanged.
        calibration_inputs: ``(C, ...)`` inputs like those to be run, ``C >= 1``.
        batch_size: Inputs per calibration pass (``>= 1``).

    Returns:
        The converted ``torch.fx.GraphModule`` (eval mode, CPU): float inputs and outputs, int8
        computation inside.

    Raises:
        ValueError: No calibration inputs, or ``batch_size < 1``.
        RuntimeError: This PyTorch build has no quantized CPU engine or no
            ``torch.ao.quantization`` (deprecated upstream; present in the pinned release).
    """
    cal = torch.as_tensor(calibration_inputs).float().cpu()
    if cal.ndim < 1 or cal.shape[0] < 1:
        raise ValueError(f"int8 calibration needs at least one input, got shape {tuple(cal.shape)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    engine = quantized_engine()
    core = copy.deepcopy(core).cpu().eval()
    previous = torch.backends.quantized.engine
    with warnings.catch_warnings(), torch.no_grad():
        # torch.ao.quantization announces its move to torchao; the pinned torch still has it
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(quantize_per_tensor|reduce_range).*")
        try:
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        except ImportError as err:
            raise RuntimeError(f"int8 inference needs torch.ao.quantization, missing here: {err}") from None
        torch.backends.quantized.engine = engine
        try:
            prepared = prepare_fx(core, get_default_qconfig_mapping(engine), example_inputs=(cal[:1],))
            for s in range(0, cal.shape[0], int(batch_size)):
                prepared(cal[s:s + int(batch_size)])
            return convert_fx(prepared).eval()
        finally:
            torch.backends.quantized.engine = previous

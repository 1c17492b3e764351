"""Physical constants and the one electron-wavelength function of the package."""

from __future__ import annotations

import math

#: Electron rest energy m0 c^2 in eV.
ELECTRON_REST_ENERGY_EV = 510998.95
#: Planck constant times the speed of light, h c, in eV·Å.
HC_EV_ANGSTROM = 12398.419843320026


def electron_wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic electron wavelength.

    ``lambda = h c / sqrt(E (E + 2 m0 c^2))`` with ``E`` the kinetic energy in eV, which
    agrees with RELION's ``12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` (V in volts) to 1e-5 relative.

    Args:
        voltage_kv: Acceleration voltage in kV (e.g. 300).

    Returns:
        Wavelength in Å (0.0197 Å at 300 kV).

    Raises:
        ValueError: If ``voltage_kv`` is not positive.
    """
    if not voltage_kv > 0:
        raise ValueError(f"voltage_kv must be positive, got {voltage_kv}")
    energy_ev = voltage_kv * 1e3
    return HC_EV_ANGSTROM / math.sqrt(energy_ev * (energy_ev + 2.0 * ELECTRON_REST_ENERGY_EV))

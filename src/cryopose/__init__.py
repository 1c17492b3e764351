"""cryopose: neural pose, shift and CTF estimation and reconstruction for cryo-EM.

Importing the package has no side effects. See ``cryopose.conventions`` for every
convention (axes, Fourier centre, Euler angles, shifts, CTF sign) used in the package.
"""

__version__ = "0.1.0"

"""The atmospheric state that moves between the forecast pipeline's parts: inputs read it, engines
step it, outputs and figures write it.

Fields are keyed by the seed's feature names (`forecast_features`: "Surface:U;1000:T"): `<level>:<var>`
with the level in hPa and the variable one of Z, Q, T, U, V, or `Surface:<var>` with P, T, U, V. Units
are ERA5's: geopotential in m² s⁻² (not metres), temperature in K, wind in m s⁻¹, specific humidity in
kg kg⁻¹, mean sea-level pressure in Pa.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

# The Pangu-Weather layout (input_upper.npy: 5 variables by 13 levels; input_surface.npy: 4), in its order.
UPPER_VARIABLES = ("Z", "Q", "T", "U", "V")
PRESSURE_LEVELS = (1000, 925, 850, 700, 600, 500, 400, 300, 250, 200, 150, 100, 50)
SURFACE_VARIABLES = ("P", "U", "V", "T")  # MSLP, U10, V10, T2M
SURFACE = "Surface"


def feature_key(level: int | str, variable: str) -> str:
    return f"{level}:{variable}"


@dataclass
class Fields:
    """One moment of the atmosphere on a regular latitude-longitude grid.

    `lat` runs north to south in degrees (as ERA5 and Pangu-Weather store it), `lon` east from 0 in
    degrees; every array in `data` is (len(lat), len(lon)) float64, keyed by feature name.
    """

    time: datetime  # valid time, UTC
    lat: Array
    lon: Array
    data: dict[str, Array] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return sorted(self.data)

    def levels(self, variable: str) -> list[int]:
        """The pressure levels (hPa) at which `variable` is present, from the top down."""
        found = []
        for key in self.data:
            level, _, var = key.partition(":")
            if var == variable and level != SURFACE:
                found.append(int(level))
        return sorted(found)

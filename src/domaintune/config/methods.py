"""The recipe's `method` section: one of the methods' own Configs (each lives beside its method in
methods/), told apart by `name`."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from domaintune.methods import method_config_types

MethodConfig = Annotated[Union[method_config_types()], Field(discriminator="name")]

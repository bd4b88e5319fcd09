"""The controller's version, for respawn_build_info. The image copies the source tree without
installing the package, so this cannot come from the package metadata; tests keep it equal to
pyproject.toml's version and the chart's appVersion."""

VERSION = "0.1.0"

from tunesmith.config.load import load_config, save_config
from tunesmith.config.schema import RunConfig

__all__ = ["RunConfig", "load_config", "save_config"]

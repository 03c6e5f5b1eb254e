"""The audit's settings: the schema (one frozen dataclass), the TOML files, and keyword settings checked.

``schema.py`` says every setting once (default, help, group, kind, flag);
``files.py`` reads ``[tool.leakaudit]``; ``keywords.py`` checks the keyword
settings of ``leakaudit.audit()``; ``build.py`` turns merged values into
``AuditSettings``, for the CLI and the API alike. Nothing here imports click.
"""

from leakaudit.config.build import build_settings
from leakaudit.config.files import FileConfig, FileKey, file_keys, read_config
from leakaudit.config.schema import EFFORTS, RUN_LEVEL_INVERSION_KEYS, AuditSettings, Option, options

__all__ = ["EFFORTS", "RUN_LEVEL_INVERSION_KEYS", "AuditSettings", "FileConfig", "FileKey", "Option", "build_settings",
           "file_keys", "options", "read_config"]

"""Write docs/configuration.md, the configuration reference, from workflow/schemas/config.schema.yaml.

    python scripts/config_docs.py [OUT]

Run it after editing the schema; tests/test_config.py fails while the file is stale.
"""

import sys

from labelfactory.config.docs import DOCS_PATH, write_markdown

if __name__ == "__main__":
    print(write_markdown(sys.argv[1] if len(sys.argv) > 1 else DOCS_PATH))

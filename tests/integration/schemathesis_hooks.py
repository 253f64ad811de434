"""Schemathesis hooks for tests/integration/test_auth_schema.py (SCHEMATHESIS_HOOKS names it).

The account API's schema gives a display name as `format: display-name` (a rule over Unicode
categories, spelled out in its description); this teaches schemathesis to generate such names.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from protocol.accounts import DISPLAY_NAME_MAX, FORBIDDEN_IN_NAMES

DISPLAY_NAMES = st.text(
    alphabet=st.characters(exclude_categories=sorted(FORBIDDEN_IN_NAMES)),  # type: ignore[arg-type]
    min_size=1,
    max_size=DISPLAY_NAME_MAX,
).filter(lambda name: bool(name.strip()))

schemathesis.openapi.format("display-name", DISPLAY_NAMES)

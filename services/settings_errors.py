"""One readable line for settings that do not validate, named as the operator sets them."""

from pydantic import ValidationError


def describe_settings_errors(exc: ValidationError, env_prefix: str) -> str:
    """`MESSENGER_RELAY_AMQP_PASSWORD: Field required; ...`: the variable, not the field."""
    return "; ".join(
        f"{env_prefix}{'_'.join(map(str, error['loc'])).upper()}: {error['msg']}"
        for error in exc.errors()
    )

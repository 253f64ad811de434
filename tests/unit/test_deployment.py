"""The docker compose deployment, checked without a Docker engine: pure file checks.

compose.yaml (and the overlays in deploy/compose/) against the Compose Specification's
schema; every file it mounts and the Dockerfile it builds exist; every command is one of the
project's console scripts (or a module of this repository); the broker reads the very
configuration the local runner and the tests use; only 8080 and 5672 are published, as
docs/deployment.md says; the service passwords' documented defaults match definitions.json.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import re
import stat
import threading
import tomllib
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deploy import local_broker
from deploy.compose import healthcheck, render_definitions
from services.auth.settings import AuthSettings
from services.relay.settings import RelaySettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
OVERLAY_FILES = sorted((REPO / "deploy" / "compose").glob("*.yaml"))
VENDORED_SCHEMA = REPO / "deploy" / "schemas" / "compose-spec.json"
SHARED_SCHEMA = REPO.parent / "shared" / "schemas" / "compose-spec.json"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DEPLOYMENT_DOCS = (REPO / "README.md", REPO / "docs" / "deployment.md")

# The documented local defaults (docs/deployment.md); definitions.json carries their hashes.
DEV_PASSWORDS = {
    "relay": "relay-dev-password",
    "auth": "auth-dev-password",
    "archive": "archive-dev-password",
}
PASSWORD_VARIABLES = {
    "relay": "MESSENGER_RELAY_PASSWORD",
    "auth": "MESSENGER_AUTH_PASSWORD",
    "archive": "MESSENGER_ARCHIVE_PASSWORD",
}
PUBLIC_PORTS = {8080, 5672}
CLUSTER_AMQP_PORTS = {"broker-2": 5673, "broker-3": 5674}  # profile `cluster` only
BROKER_API_PORT = 8081
MANAGEMENT_PORT = 15672

INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::[-?](?P<default>[^}]*))?\}")
# The innermost `${NAME:-default}` of a value (a default may hold another interpolation).
INNERMOST = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^${}]*))?\}")
# Every image and published host port is a variable with the documented default.
IMAGE_VARIABLES = {
    "MESSENGER_RABBITMQ_IMAGE": "rabbitmq:4.1",
    "MESSENGER_PYTHON_IMAGE": "python:3.11-slim",
    "MESSENGER_IMAGE": "messenger:local",
}
PORT_VARIABLES = {
    "MESSENGER_PUBLIC_PORT": 8080,
    "MESSENGER_AMQP_PORT": 5672,
    "MESSENGER_AMQP_PORT_2": 5673,
    "MESSENGER_AMQP_PORT_3": 5674,
}
BROKER_AUTH_NETWORK = "broker-auth"
BROKER_API_HOST = "auth-broker-api"


# -- helpers ---------------------------------------------------------------------------------


def with_defaults(value: str) -> str:
    """`value` as compose resolves it when no variable is set: every default applied."""
    while (match := INNERMOST.search(value)) is not None:
        value = value[: match.start()] + (match["default"] or "") + value[match.end() :]
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def compose_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(VENDORED_SCHEMA.read_text())
    return schema


def our_image_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if "build" in svc}


def published_ports(service: dict[str, Any]) -> list[tuple[str, int | None, int]]:
    """(host address, published port, container port) for each entry of `ports`."""
    result: list[tuple[str, int | None, int]] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append(
                (
                    entry.get("host_ip", "0.0.0.0"),
                    int(published) if published is not None else None,
                    int(entry["target"]),
                )
            )
            continue
        parts = with_defaults(str(entry)).split("/")[0].split(":")
        if len(parts) == 1:  # container port only: Docker picks a random host port
            result.append(("0.0.0.0", None, int(parts[0])))
        elif len(parts) == 2:
            result.append(("0.0.0.0", int(parts[0]), int(parts[1])))
        else:
            result.append((":".join(parts[:-2]), int(parts[-2]), int(parts[-1])))
    return result


def mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The service's volumes by container path, in long syntax."""
    result: dict[str, dict[str, Any]] = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target, *_ = entry.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            entry = {"type": kind, "source": source, "target": target}
        result[entry["target"]] = entry
    return result


def bind_source(path: str) -> Path:
    """A bind mount's host path: relative paths are relative to compose.yaml's directory."""
    return (COMPOSE_FILE.parent / path).resolve()


def console_scripts() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(pyproject["project"]["scripts"])


def is_repo_module(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None and REPO in Path(spec.origin).parents


def assert_runs_project_code(argv: list[str], where: str) -> None:
    assert argv, f"{where}: empty command"
    if argv[0] in console_scripts():
        return
    assert argv[:2] == ["python", "-m"] and len(argv) > 2, (
        f"{where}: {argv[0]!r} is neither a console script of pyproject.toml nor `python -m`"
    )
    assert is_repo_module(argv[2]), f"{where}: module {argv[2]} is not in this repository"


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def conf_value(path: Path, key: str) -> str:
    values = [
        line.split("=", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.split("=", 1)[0].strip() == key and not line.lstrip().startswith("#")
    ]
    assert values, f"{key} is not set in {path}"
    return values[-1]  # later keys win, as in RabbitMQ


def plugins(path: Path) -> set[str]:
    text = path.read_text().strip()
    assert text.startswith("[") and text.endswith("]."), f"{path} is not an Erlang list"
    return {p.strip() for p in text[1:-2].split(",") if p.strip()}


def verifies(password_hash: str, password: str) -> bool:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt4 + sha256(salt4 + password))."""
    raw = base64.b64decode(password_hash)
    salt, digest = raw[:4], raw[4:]
    return len(raw) == 36 and hashlib.sha256(salt + password.encode()).digest() == digest


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1]) for item in logical]


def documented_ports(text: str) -> set[int] | None:
    """Ports in the table under a "Published ports" heading; None when there is none."""
    match = re.search(r"^#+ Published ports\s*$(?P<body>.*?)(?=^#|\Z)", text, re.M | re.S)
    if match is None:
        return None
    return {
        int(cell.group(1)) for cell in re.finditer(r"^\|\s*`?(\d+)`?\s*\|", match["body"], re.M)
    }


# -- the Compose file is valid -------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE_FILE, *OVERLAY_FILES], ids=lambda p: p.name)
def test_compose_files_validate_against_the_compose_specification(path: Path) -> None:
    jsonschema.validate(load_yaml(path), compose_schema(), cls=jsonschema.Draft7Validator)


def test_the_schema_rejects_an_unknown_service_key(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["relay"]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema(), cls=jsonschema.Draft7Validator)


def test_vendored_schema_is_the_shared_one_when_that_is_present() -> None:
    if not SHARED_SCHEMA.exists():
        pytest.skip(f"no shared copy at {SHARED_SCHEMA}")
    assert json.loads(VENDORED_SCHEMA.read_text()) == json.loads(SHARED_SCHEMA.read_text())


# -- what it mounts and builds exists ------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE_FILE, *OVERLAY_FILES], ids=lambda p: p.name)
def test_every_bind_mounted_file_exists_and_every_named_volume_is_declared(
    path: Path, compose: dict[str, Any]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in load_yaml(path)["services"].items():
        for target, mount in mounts(service).items():
            if mount["type"] == "bind":
                assert bind_source(mount["source"]).is_file(), f"{name}: {mount['source']} missing"
            elif mount["type"] == "volume":
                assert mount["source"] in declared, f"{name}: volume for {target} not declared"


def test_every_built_image_comes_from_an_existing_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    built = our_image_services(services)
    assert set(built) >= {"auth", "relay"}
    for name, service in built.items():
        context = (COMPOSE_FILE.parent / service["build"]["context"]).resolve()
        assert context == REPO, f"{name} builds from {context}, not the repository root"
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE


# -- commands are the project's ------------------------------------------------------------


def test_every_service_command_is_a_console_script_of_the_project(
    services: dict[str, dict[str, Any]],
) -> None:
    built = our_image_services(services)
    assert built["auth"]["command"] == ["messenger-auth", "serve"]
    assert built["relay"]["command"] == ["messenger-relay"]
    for name, service in built.items():
        assert_runs_project_code(service["command"], f"service {name}")


def test_every_health_check_of_our_image_runs_project_code(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in our_image_services(services).items():
        check = service["healthcheck"]
        if check.get("disable"):
            continue
        assert check["test"][0] == "CMD", f"{name}: use exec form, the image has no shell tools"
        assert_runs_project_code(check["test"][1:], f"health check of {name}")


def test_service_environment_names_are_real_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    for service, settings, prefix in (
        ("auth", AuthSettings, "MESSENGER_AUTH_"),
        ("relay", RelaySettings, "MESSENGER_RELAY_"),
    ):
        env = env_of(services[service])
        for key in env:
            assert key.startswith(prefix), f"{service}: {key} is not one of its settings"
            assert key.removeprefix(prefix).lower() in settings.model_fields, f"{service}: {key}"
        assert f"{prefix}AMQP_PASSWORD" in env
        nodes = INTERPOLATION.fullmatch(env[f"{prefix}AMQP_NODES"])
        assert nodes is not None, f"{service}: the node list comes from the environment"
        assert (nodes["name"], nodes["default"]) == ("MESSENGER_BROKER_NODES", "broker:5672")


# -- the broker runs our configuration -----------------------------------------------------


def test_broker_mounts_the_config_files_the_local_runner_and_tests_use(
    services: dict[str, dict[str, Any]],
) -> None:
    broker = mounts(services["broker"])
    for name in ("rabbitmq.conf", "enabled_plugins"):
        source = broker[f"/etc/rabbitmq/{name}"]
        assert source["type"] == "bind" and source.get("read_only") is True
        assert bind_source(source["source"]) == (local_broker.CONFIG_DIR / name).resolve()
    template = mounts(services["broker-init"])["/etc/messenger/definitions.template.json"]
    assert bind_source(template["source"]) == (local_broker.CONFIG_DIR / "definitions.json")


def test_broker_is_an_official_rabbitmq_4_or_3_13_image(
    services: dict[str, dict[str, Any]],
) -> None:
    assert re.fullmatch(
        r"rabbitmq:(4\.\d+|3\.13)(\.\d+)?", with_defaults(services["broker"]["image"])
    )


def test_every_image_is_a_variable_whose_default_is_the_official_one(
    services: dict[str, dict[str, Any]],
) -> None:
    """The same file runs on locally built images (deploy/images/build-local.sh)."""
    used: set[str] = set()
    for name, service in services.items():
        match = INTERPOLATION.fullmatch(str(service["image"]))
        assert match is not None, f"{name}: image {service['image']!r} is not a variable"
        assert IMAGE_VARIABLES[match["name"]] == match["default"], name
        used.add(match["name"])
        if "build" in service:
            arg = INTERPOLATION.fullmatch(service["build"]["args"]["PYTHON_IMAGE"])
            assert arg is not None
            assert (arg["name"], arg["default"]) == ("MESSENGER_PYTHON_IMAGE", "python:3.11-slim")
            used.add(arg["name"])
    assert used == set(IMAGE_VARIABLES)


def test_every_published_host_port_is_a_variable_with_the_documented_default(
    services: dict[str, dict[str, Any]],
) -> None:
    used: dict[str, int] = {}
    for name, service in services.items():
        for entry in service.get("ports", []):
            host_port = str(entry).rsplit(":", 1)[0]
            match = INTERPOLATION.fullmatch(host_port)
            assert match is not None, f"{name}: published port {entry!r} is not a variable"
            used[match["name"]] = int(match["default"])
    assert used == PORT_VARIABLES
    # The broker's address clients are told follows the published AMQP port.
    meta = env_of(services["auth"])["MESSENGER_AUTH_PUBLIC_AMQP_URL"]
    assert "${MESSENGER_AMQP_PORT:-5672}" in meta
    assert with_defaults(meta) == "amqp://127.0.0.1:5672"


def test_broker_reads_the_definitions_broker_init_writes(
    services: dict[str, dict[str, Any]],
) -> None:
    command = services["broker-init"]["command"]
    written = Path(command[command.index("--output") + 1])
    conf_d = mounts(services["broker"])["/etc/rabbitmq/conf.d/90-messenger.conf"]
    assert conf_value(bind_source(conf_d["source"]), "definitions.local.path") == str(written)
    init_volume = mounts(services["broker-init"])[str(written.parent)]
    broker_volume = mounts(services["broker"])[str(written.parent)]
    assert init_volume["type"] == broker_volume["type"] == "volume"
    assert init_volume["source"] == broker_volume["source"]
    assert broker_volume.get("read_only") is True


def test_broker_keeps_its_data_on_a_named_volume_under_a_fixed_node_name(
    services: dict[str, dict[str, Any]],
) -> None:
    assert mounts(services["broker"])["/var/lib/rabbitmq"]["type"] == "volume"
    assert services["broker"]["hostname"] == "broker"


def test_broker_asks_the_auth_service_on_its_unpublished_broker_api(
    services: dict[str, dict[str, Any]],
) -> None:
    env = env_of(services["auth"])
    port = env["MESSENGER_AUTH_BROKER_API_PORT"]
    assert int(port) == BROKER_API_PORT
    assert env["MESSENGER_AUTH_BROKER_API_HOST"] == BROKER_API_HOST
    mount = mounts(services["broker"])["/etc/rabbitmq/conf.d/90-messenger.conf"]
    conf_d = bind_source(mount["source"])
    for path in ("user", "vhost", "resource", "topic"):
        # conf.d is read after rabbitmq.conf: its keys win
        url = conf_value(conf_d, f"auth_http.{path}_path")
        assert url == f"http://{BROKER_API_HOST}:{port}/broker/{path}"


def networks_of(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    value = service.get("networks", ["default"])
    if isinstance(value, list):
        return {name: {} for name in value}
    return {name: (options or {}) for name, options in value.items()}


def test_the_broker_api_is_on_a_network_only_the_brokers_share_with_the_auth_service(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """The auth service binds its broker API to its name on the broker-auth network; the
    relays and anything else on the default network cannot reach it."""
    assert compose["networks"][BROKER_AUTH_NETWORK] == {"internal": True}
    on_it = {name for name, svc in services.items() if BROKER_AUTH_NETWORK in networks_of(svc)}
    assert on_it == {"auth", *broker_nodes(services)}
    aliases = {
        name: options.get("aliases", [])
        for name, svc in services.items()
        for network, options in networks_of(svc).items()
        if BROKER_API_HOST in options.get("aliases", [])
    }
    assert aliases == {"auth": [BROKER_API_HOST]}
    assert networks_of(services["auth"])[BROKER_AUTH_NETWORK]["aliases"] == [BROKER_API_HOST]
    assert BROKER_API_HOST not in networks_of(services["auth"]).get("default", {}).get(
        "aliases", []
    )
    assert services["broker-init"]["network_mode"] == "none"


def test_auth_keeps_its_user_store_on_a_named_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    db_path = Path(env_of(services["auth"])["MESSENGER_AUTH_DB_PATH"])
    volume = mounts(services["auth"])[str(db_path.parent)]
    assert volume["type"] == "volume"


# -- ports ---------------------------------------------------------------------------------


def test_only_the_public_api_and_amqp_are_published(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {name: published_ports(svc) for name, svc in services.items()}
    assert published["auth"] == [("0.0.0.0", 8080, 8080)]
    assert published["broker"] == [("0.0.0.0", 5672, 5672)]
    for name, port in CLUSTER_AMQP_PORTS.items():
        assert published[name] == [("0.0.0.0", port, 5672)]
        assert services[name]["profiles"] == ["cluster"]
    every = {port for ports in published.values() for _, port, _ in ports}
    assert every == PUBLIC_PORTS | set(CLUSTER_AMQP_PORTS.values())


def test_broker_api_and_management_are_not_published(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for _, published, target in published_ports(service):
            assert BROKER_API_PORT not in (published, target), name
            assert MANAGEMENT_PORT not in (published, target), name
    # On (the auth service closes ended sessions' connections through it), never published.
    assert "rabbitmq_management" in plugins(local_broker.CONFIG_DIR / "enabled_plugins")


def test_management_overlay_adds_only_a_loopback_port_to_the_plugins() -> None:
    overlay = load_yaml(REPO / "deploy" / "compose" / "management.yaml")["services"]["broker"]
    assert published_ports(overlay) == [("127.0.0.1", MANAGEMENT_PORT, MANAGEMENT_PORT)]
    mounted = bind_source(mounts(overlay)["/etc/rabbitmq/enabled_plugins"]["source"])
    base = plugins(local_broker.CONFIG_DIR / "enabled_plugins")
    assert plugins(mounted) == base


def test_published_ports_match_the_deployment_docs(services: dict[str, dict[str, Any]]) -> None:
    published = {port for svc in services.values() for _, port, _ in published_ports(svc)}
    documented = {
        path.name: ports
        for path in DEPLOYMENT_DOCS
        if path.exists() and (ports := documented_ports(path.read_text())) is not None
    }
    assert documented, "no 'Published ports' section in README.md or docs/deployment.md"
    for name, ports in documented.items():
        assert ports == published, f"{name} documents {sorted(ports)}"


# -- health, order, replicas ---------------------------------------------------------------


def test_relay_runs_two_replicas(services: dict[str, dict[str, Any]]) -> None:
    assert services["relay"]["deploy"]["replicas"] == 2
    assert "container_name" not in services["relay"]  # a fixed name would forbid --scale


def test_every_long_running_service_has_a_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("broker", "auth", "relay"):
        check = services[name]["healthcheck"]
        assert not check.get("disable") and check["test"], name


def test_services_start_once_what_they_need_is_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["broker"]["depends_on"] == {
        "broker-init": {"condition": "service_completed_successfully"},
        # the auth service answers the broker's login checks before the node takes logins
        "auth": {"condition": "service_healthy"},
    }
    assert "depends_on" not in services["auth"]
    assert services["relay"]["depends_on"]["broker"] == {"condition": "service_healthy"}


# -- secrets -------------------------------------------------------------------------------


def test_definitions_default_hashes_match_the_documented_dev_passwords() -> None:
    definitions = json.loads((local_broker.CONFIG_DIR / "definitions.json").read_text())
    users = {user["name"]: user for user in definitions["users"]}
    assert set(users) == set(DEV_PASSWORDS)
    for name, password in DEV_PASSWORDS.items():
        assert users[name]["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert verifies(users[name]["password_hash"], password), name
        assert not verifies(users[name]["password_hash"], password + "x")


def test_service_passwords_come_from_the_environment_with_the_documented_defaults(
    services: dict[str, dict[str, Any]],
) -> None:
    init_env = env_of(services["broker-init"])
    users_env = {
        "relay": env_of(services["relay"])["MESSENGER_RELAY_AMQP_PASSWORD"],
        "auth": env_of(services["auth"])["MESSENGER_AUTH_AMQP_PASSWORD"],
        "archive": env_of(services["archive"])["MESSENGER_ARCHIVE_AMQP_PASSWORD"],
    }
    for user, variable in PASSWORD_VARIABLES.items():
        expected = f"${{{variable}:-{DEV_PASSWORDS[user]}}}"
        # the broker's hash and the service's login come from one variable
        assert init_env[variable] == expected
        assert users_env[user] == expected
        assert render_definitions.PASSWORD_ENV[user] == variable


def test_the_docs_name_every_secret_and_its_local_default() -> None:
    text = "\n".join(p.read_text() for p in DEPLOYMENT_DOCS if p.exists())
    for user, variable in PASSWORD_VARIABLES.items():
        assert variable in text and DEV_PASSWORDS[user] in text


def test_no_literal_secret_in_the_compose_files() -> None:
    for path in [COMPOSE_FILE, *OVERLAY_FILES]:
        for name, service in load_yaml(path)["services"].items():
            for key, value in env_of(service).items():
                if "PASSWORD" in key:
                    assert INTERPOLATION.fullmatch(value), f"{path.name}: {name}.{key}"


# -- rendering the definitions (broker-init) -----------------------------------------------


def test_rendered_definitions_carry_hashes_of_the_given_passwords() -> None:
    template = json.loads((local_broker.CONFIG_DIR / "definitions.json").read_text())
    passwords = {"relay": "relay-secret-1", "auth": "auth-secret-2", "archive": "archive-3"}
    rendered = render_definitions.render(template, passwords)
    for user in rendered["users"]:
        assert verifies(user["password_hash"], passwords[user["name"]])
        assert not verifies(user["password_hash"], DEV_PASSWORDS[user["name"]])
    assert {k: v for k, v in rendered.items() if k != "users"} == {
        k: v for k, v in template.items() if k != "users"
    }
    assert verifies(template["users"][0]["password_hash"], DEV_PASSWORDS["relay"])  # untouched


def test_rendering_without_a_service_password_fails_and_names_the_variable() -> None:
    template = json.loads((local_broker.CONFIG_DIR / "definitions.json").read_text())
    with pytest.raises(render_definitions.RenderError, match="MESSENGER_AUTH_PASSWORD"):
        render_definitions.render(template, {"relay": "relay-secret-1"})


def test_an_admin_account_exists_only_when_its_password_is_given() -> None:
    template = json.loads((local_broker.CONFIG_DIR / "definitions.json").read_text())
    plain = render_definitions.render(template, DEV_PASSWORDS)
    assert {u["name"] for u in plain["users"]} == set(DEV_PASSWORDS)
    managed = render_definitions.render(template, DEV_PASSWORDS, admin_password="admin-secret")
    admin = next(u for u in managed["users"] if u["name"] == "admin")
    assert admin["tags"] == ["administrator"]
    assert verifies(admin["password_hash"], "admin-secret")


def test_render_command_writes_a_file_the_broker_user_can_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSENGER_RELAY_PASSWORD", "relay-secret-1")
    monkeypatch.setenv("MESSENGER_AUTH_PASSWORD", "auth-secret-2")
    monkeypatch.setenv("MESSENGER_ARCHIVE_PASSWORD", "archive-3")
    monkeypatch.delenv("MESSENGER_BROKER_ADMIN_PASSWORD", raising=False)
    output = tmp_path / "broker" / "definitions.json"
    assert render_definitions.main(["--output", str(output)]) == 0
    rendered = json.loads(output.read_text())
    users = {u["name"]: u["password_hash"] for u in rendered["users"]}
    assert verifies(users["relay"], "relay-secret-1") and verifies(users["auth"], "auth-secret-2")
    assert stat.S_IMODE(output.stat().st_mode) == 0o644
    assert [p.name for p in output.parent.iterdir()] == ["definitions.json"]


def test_render_command_fails_when_a_password_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSENGER_RELAY_PASSWORD", "relay-secret-1")
    monkeypatch.delenv("MESSENGER_AUTH_PASSWORD", raising=False)
    output = tmp_path / "definitions.json"
    assert render_definitions.main(["--output", str(output)]) == 1
    assert not output.exists()


# -- the image -----------------------------------------------------------------------------


def test_image_is_multi_stage_on_slim_python_3_11() -> None:
    bases = [args.split()[0] for instr, args in dockerfile_instructions() if instr == "FROM"]
    assert len(bases) >= 2
    assert set(bases) == {"${PYTHON_IMAGE}"}
    (default,) = [args for instr, args in dockerfile_instructions() if instr == "ARG"]
    assert default == "PYTHON_IMAGE=python:3.11-slim"  # official; build-local passes its own
    copies = [args for instr, args in dockerfile_instructions() if instr == "COPY"]
    assert any(args.startswith("--from=build ") for args in copies)


def test_image_installs_only_the_server_runtime_dependencies() -> None:
    runs = " ".join(args for instr, args in dockerfile_instructions() if instr == "RUN")
    assert "pip install '.[server]'" in runs
    assert "[dev" not in runs and "[bench" not in runs


def test_image_runs_as_an_unprivileged_user_with_a_health_check() -> None:
    instructions = dockerfile_instructions()
    users = [args.split(":")[0] for instr, args in instructions if instr == "USER"]
    assert users and users[-1] not in ("root", "0")
    checks = [args for instr, args in instructions if instr == "HEALTHCHECK"]
    assert len(checks) == 1
    argv = json.loads(checks[0][checks[0].index("CMD") + 3 :])
    assert_runs_project_code(argv, "Dockerfile HEALTHCHECK")
    cmd = json.loads(next(args for instr, args in instructions if instr == "CMD"))
    assert_runs_project_code(cmd, "Dockerfile CMD")


def test_image_bakes_in_no_secret() -> None:
    for instr, args in dockerfile_instructions():
        if instr in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN", args, re.I), args


def test_everything_the_image_copies_exists_and_reaches_the_build_context() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for instr, args in dockerfile_instructions():
        if instr != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            path = source.rstrip("/")
            assert (REPO / path).exists(), f"COPY {source}: not in the repository"
            assert not any(fnmatch(path, pattern) for pattern in ignored), f"{source} ignored"
    for secret_like in (".env", ".venv", ".git"):
        assert secret_like in ignored


# -- health-check helper -------------------------------------------------------------------

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:A3C2 0100007F:1628 06 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:A3C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""
ESTABLISHED_TO_5672 = (
    "   3: 0200000A:B00C 0300000A:1628 01 00000000:00000000 00:00000000 00000000 0 0 4 1"
)


def test_relay_health_needs_an_established_connection_to_the_amqp_port() -> None:
    lines = PROC_NET_TCP.splitlines()[1:]
    assert not healthcheck.established_to_port(lines, 5672)  # listening, time-wait, other port
    assert healthcheck.established_to_port([*lines, ESTABLISHED_TO_5672], 5672)


def test_relay_health_reads_the_tcp_tables(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(PROC_NET_TCP)
    assert not healthcheck.amqp_connected(5672, [table, tmp_path / "missing"])
    table.write_text(PROC_NET_TCP + ESTABLISHED_TO_5672 + "\n")
    assert healthcheck.amqp_connected(5672, [table])


def test_http_health_is_ok_only_for_a_2xx_answer() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert healthcheck.main(["http", f"{base}/healthz"]) == 0
        assert healthcheck.main(["http", f"{base}/down"]) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert healthcheck.main(["http", f"{base}/healthz"]) == 1  # nobody listens any more


# -- the `cluster` profile: three broker nodes ---------------------------------------------

CLUSTER_CONF = local_broker.CONFIG_DIR / "cluster" / "conf.d" / "91-cluster.conf"
CLUSTER_CONF_TARGET = "/etc/rabbitmq/conf.d/91-cluster.conf"
JOINERS = ("broker-2", "broker-3")
COOKIE = "${MESSENGER_ERLANG_COOKIE:-messenger-dev-cookie}"
HEALTHY = {"condition": "service_healthy"}


def broker_nodes(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run a RabbitMQ node (the official image, with a fixed hostname)."""
    return {
        name: svc
        for name, svc in services.items()
        if with_defaults(str(svc.get("image", ""))).startswith("rabbitmq:") and "hostname" in svc
    }


def test_only_the_cluster_profile_adds_services(services: dict[str, dict[str, Any]]) -> None:
    profiled = {name: svc["profiles"] for name, svc in services.items() if "profiles" in svc}
    assert profiled == {name: ["cluster"] for name in (*JOINERS, "broker-cluster-init")}


def test_cluster_nodes_run_the_brokers_image_configuration_and_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    nodes = broker_nodes(services)
    assert set(nodes) == {"broker", *JOINERS}
    broker = services["broker"]
    shared = {t: m for t, m in mounts(broker).items() if t != "/var/lib/rabbitmq"}
    for name, node in nodes.items():
        assert node["image"] == broker["image"] and node["hostname"] == name
        assert node["healthcheck"] == broker["healthcheck"]
        assert {t: mounts(node)[t] for t in shared} == shared, name
        assert mounts(node)["/var/lib/rabbitmq"]["type"] == "volume"
    data_volumes = {mounts(node)["/var/lib/rabbitmq"]["source"] for node in nodes.values()}
    assert len(data_volumes) == len(nodes)  # each node keeps its own database


def test_joining_nodes_find_the_first_node_through_classic_peer_discovery(
    services: dict[str, dict[str, Any]],
) -> None:
    assert conf_value(CLUSTER_CONF, "cluster_formation.peer_discovery_backend") == "classic_config"
    listed = {
        conf_value(CLUSTER_CONF, f"cluster_formation.classic_config.nodes.{i}")
        for i in range(1, len(JOINERS) + 2)
    }
    assert listed == {f"rabbit@{svc['hostname']}" for svc in broker_nodes(services).values()}
    for name in JOINERS:
        mount = mounts(services[name])[CLUSTER_CONF_TARGET]
        assert bind_source(mount["source"]) == CLUSTER_CONF.resolve()
        assert mount.get("read_only") is True
    # the first node forms the cluster alone; the others join it one at a time
    assert CLUSTER_CONF_TARGET not in mounts(services["broker"])
    assert services["broker-2"]["depends_on"] == {"broker": HEALTHY}
    assert services["broker-3"]["depends_on"] == {"broker-2": HEALTHY}


def test_local_cluster_writes_the_same_peer_discovery_keys() -> None:
    from deploy.local_cluster import peer_discovery_config

    names = ["a@localhost", "b@localhost", "c@localhost"]
    written = dict(line.split(" = ") for line in peer_discovery_config(names).splitlines())
    compose_keys = {
        line.split("=")[0].strip()
        for line in CLUSTER_CONF.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert set(written) == compose_keys
    assert sorted(v for k, v in written.items() if ".nodes." in k) == names


def test_every_node_and_the_cluster_tools_share_one_cookie_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in (*broker_nodes(services), "broker-cluster-init"):
        assert env_of(services[name])["RABBITMQ_ERLANG_COOKIE"] == COOKIE, name
    text = "\n".join(p.read_text() for p in DEPLOYMENT_DOCS if p.exists())
    assert "MESSENGER_ERLANG_COOKIE" in text and "messenger-dev-cookie" in text


def test_cluster_init_grows_the_quorum_queues_onto_both_joining_nodes(
    services: dict[str, dict[str, Any]],
) -> None:
    init = services["broker-cluster-init"]
    assert init["image"] == services["broker"]["image"]
    assert init["depends_on"] == {"broker-3": HEALTHY}  # the last joiner: all three are up
    script = " ".join(init["command"])
    for name in JOINERS:
        assert f"-n rabbit@broker grow rabbit@{name} all" in script
    assert "'^messenger$$'" in script  # $$: a literal $ after compose's interpolation


def test_definitions_queue_type_is_a_setting_classic_by_default(
    services: dict[str, dict[str, Any]],
) -> None:
    command = services["broker-init"]["command"]
    setting = INTERPOLATION.fullmatch(command[command.index("--queue-type") + 1])
    assert setting is not None
    assert (setting["name"], setting["default"]) == ("MESSENGER_QUEUE_TYPE", "classic")
    inbox = INTERPOLATION.fullmatch(env_of(services["auth"])["MESSENGER_AUTH_INBOX_QUEUE_TYPE"])
    assert inbox is not None and inbox["default"] == "classic"


def test_queue_type_transform_changes_only_the_queue_type_and_delivery_limit() -> None:
    template = json.loads((local_broker.CONFIG_DIR / "definitions.json").read_text())
    quorum = render_definitions.with_queue_type(template, "quorum")
    assert {q["arguments"]["x-queue-type"] for q in quorum["queues"]} == {"quorum"}
    assert {q["arguments"]["x-queue-type"] for q in template["queues"]} == {"classic"}
    limits = {p["name"]: p["definition"].get("delivery-limit") for p in quorum["policies"]}
    assert limits["outbox-limit"] == limits["dead-letter-limit"] == 1000
    # a quorum-only key keeps a policy off classic queues: none in the classic template
    assert all("delivery-limit" not in p["definition"] for p in template["policies"])

    def without_type(definitions: dict[str, Any]) -> str:
        copy = json.loads(json.dumps(definitions))
        for queue in copy["queues"]:
            del queue["arguments"]["x-queue-type"]
        for policy in copy["policies"]:
            policy["definition"].pop("delivery-limit", None)
        return json.dumps(copy, sort_keys=True)

    assert without_type(quorum) == without_type(template)
    with pytest.raises(render_definitions.RenderError, match="stream"):
        render_definitions.with_queue_type(template, "stream")


def test_render_command_writes_quorum_queues_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESSENGER_RELAY_PASSWORD", "relay-secret-1")
    monkeypatch.setenv("MESSENGER_AUTH_PASSWORD", "auth-secret-2")
    monkeypatch.setenv("MESSENGER_ARCHIVE_PASSWORD", "archive-3")
    monkeypatch.delenv("MESSENGER_BROKER_ADMIN_PASSWORD", raising=False)
    output = tmp_path / "definitions.json"
    assert render_definitions.main(["--output", str(output), "--queue-type", "quorum"]) == 0
    queues = json.loads(output.read_text())["queues"]
    assert {q["arguments"]["x-queue-type"] for q in queues} == {"quorum"}
    assert all(q["arguments"]["x-single-active-consumer"] for q in queues if "outbox" in q["name"])


def test_make_run_cluster_points_services_and_clients_at_every_node(
    services: dict[str, dict[str, Any]],
) -> None:
    """`make run CLUSTER=1` with Docker: the relays and the auth service get every node on
    the deployment's network, clients every node's published port."""
    from deploy.run import CLUSTER_COMPOSE_ENV

    nodes = broker_nodes(services)
    internal = CLUSTER_COMPOSE_ENV["MESSENGER_BROKER_NODES"].split(",")
    assert sorted(internal) == sorted(f"{svc['hostname']}:5672" for svc in nodes.values())
    assert internal[0] == "broker:5672"  # the node that formed the cluster comes first
    public = CLUSTER_COMPOSE_ENV["MESSENGER_PUBLIC_AMQP_URLS"].split(",")
    published = sorted(
        port for svc in nodes.values() for _, port, _ in published_ports(svc) if port is not None
    )
    assert sorted(int(url.rsplit(":", 1)[1]) for url in public) == published
    text = "\n".join(p.read_text() for p in DEPLOYMENT_DOCS if p.exists())
    for name in ("MESSENGER_BROKER_NODES", "MESSENGER_PUBLIC_AMQP_URLS"):
        assert f"{name}={CLUSTER_COMPOSE_ENV[name]}" in text, f"docs: {name}"


def test_the_image_copies_every_package_the_project_installs() -> None:
    """A package left out of the build stage is missing from the image: its services then
    fail at import (the `broker` package of the module split was, once)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        args.split()[0].rstrip("/")
        for instr, args in dockerfile_instructions()
        if instr == "COPY" and not args.startswith("--")
    }
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"

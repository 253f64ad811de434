"""What makes one `make run` instance itself: node name and AMQP port, kept in its data
directory; and how a node's death is put into words."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from deploy import instance
from deploy.local_broker import describe_exit


def test_the_first_start_chooses_and_every_later_start_remembers(tmp_path: Path):
    first = instance.resolve(tmp_path)
    assert first.amqp_ports[0] >= instance.FIRST_AMQP_PORT and first.amqp_ports[0] != 5672
    assert first.node().endswith("@localhost") and first.node_name.startswith("messenger-")
    assert json.loads((tmp_path / "instance.json").read_text()) == {
        "node_name": first.node_name,
        "amqp_ports": first.amqp_ports,
    }
    assert instance.resolve(tmp_path) == first


def test_two_data_directories_get_two_node_names(tmp_path: Path):
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    assert instance.resolve(a).node_name != instance.resolve(b).node_name
    assert instance.derived_node_name(a).startswith("messenger-run-")


def test_a_directory_from_before_keeps_the_name_its_database_is_filed_under(tmp_path: Path):
    (tmp_path / "rabbitmq" / "mnesia" / "messenger-local@localhost").mkdir(parents=True)
    assert instance.resolve(tmp_path).node() == "messenger-local@localhost"
    cluster = tmp_path / "cluster"
    (cluster / "rabbitmq" / "node-1" / "mnesia" / "messenger-local-1@localhost").mkdir(parents=True)
    assert instance.resolve(cluster, count=3).node_name == "messenger-local"


def test_settings_win_and_are_remembered(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    instance.resolve(tmp_path)
    chosen = instance.resolve(tmp_path, requested_port=6000, requested_name="mine@localhost")
    assert (chosen.node(), chosen.amqp_ports) == ("mine@localhost", [6000])
    assert "node name changed" in caplog.text
    assert instance.resolve(tmp_path) == chosen
    with pytest.raises(ValueError, match="letters, digits"):
        instance.resolve(tmp_path, requested_name="no spaces")
    with pytest.raises(ValueError, match="localhost"):
        instance.resolve(tmp_path, requested_name="x@elsewhere")


def test_a_cluster_gets_three_ports(tmp_path: Path):
    ports = instance.resolve(tmp_path, count=3).amqp_ports
    assert len(set(ports)) == 3


def test_a_remembered_port_taken_by_another_program_moves_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, "messenger.run")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        instance.resolve(tmp_path, requested_port=taken)
        moved = instance.resolve(tmp_path)
    assert moved.amqp_ports != [taken]
    assert f"AMQP port {taken} of this data directory is taken" in caplog.text


def test_stable_ports_are_free_and_below_the_ephemeral_range():
    ports = instance.stable_ports(3)
    assert len(set(ports)) == 3
    assert all(port < instance._ephemeral_start() for port in ports)


DUPLICATE = (
    "Kernel pid terminated (application_controller) ({application_start_failure,"
    "rabbitmq_prelaunch,{{shutdown,{failed_to_start_child,prelaunch,{duplicate_node_name,"
    '"messenger-x","localhost"}}},{rabbit_prelaunch_app,start,[normal,[]]}}})'
)
PORT_IN_USE = (
    'init terminating in do_boot ({error,{could_not_start_listener,"127.0.0.1",35943,'
    "{{shutdown,{failed_to_start_child,{ranch_embedded_sup,{acceptor,{127,0,0,1},35943}},"
    "{listen_error,{acceptor,{127,0,0,1},35943},eaddrinuse}}}}}})"
)


@pytest.mark.parametrize(
    ("output", "cause"),
    [
        (
            f"starting\n{DUPLICATE}\n\nCrash dump is being written",
            "another node named messenger-x@localhost already runs on this machine"
            " (duplicate_node_name)",
        ),
        (f"{PORT_IN_USE}\n", "port 35943 on 127.0.0.1 is already in use (eaddrinuse)"),
        ("  Starting broker... completed with 3 plugins.\nKilled\n", "killed by SIGKILL"),
        ("Kernel pid terminated (something new)\n", "Kernel pid terminated (something new)"),
        ("last words\n", "it stopped; its last line: last words"),
        ("", "it stopped without a word"),
    ],
)
def test_a_nodes_exit_is_described_from_its_output(output: str, cause: str):
    assert describe_exit(output) == cause

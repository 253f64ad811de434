"""The front end's copy of the wire contract is generated from protocol/, never stale."""

from protocol.accounts import check_display_name, check_username
from protocol.messages import check_text
from web import protocol_gen


def test_the_committed_file_is_what_protocol_gen_writes_now():
    committed = protocol_gen.OUTPUT.read_text(encoding="utf-8")
    assert committed == protocol_gen.render(), (
        "web/src/generated/protocol.ts is stale: run `make web` (or "
        "`python -m web.protocol_gen`) and commit the result with the rebuilt web/dist"
    )


def test_the_rules_found_by_probing_are_the_validators_rules():
    assert protocol_gen.username_lengths() == (3, 32)
    for bad in ("ab", "a" * 33):
        try:
            check_username(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
    categories = protocol_gen.forbidden_display_name_categories()
    assert {"Cc", "Cf", "Zl", "Zp"} <= set(categories)
    assert not {"Lu", "Ll", "So", "Zs"} & set(categories)  # letters, emoji, spaces are fine
    check_display_name("Zoë 🚀 Smith")
    ranges = protocol_gen.forbidden_text_ranges()
    assert (0x0A, 0x0A) not in ranges and not any(lo <= 0x09 <= hi for lo, hi in ranges)
    assert any(lo <= 0x00 <= hi for lo, hi in ranges)
    assert any(lo <= 0x7F <= hi for lo, hi in ranges)
    check_text("line one\n\tline two")


def test_interfaces_follow_the_models_json_schema():
    text = protocol_gen.render()
    assert "export interface DeliveredMessage {" in text
    assert "  from: string;" in text  # the alias, as it travels
    assert "  client_id?: string | null;" in text
    assert '  status: "delivered" | "read";' in text
    assert "  amqp_urls?: string[];" in text


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch):
    stale = tmp_path / "protocol.ts"
    stale.write_text("// old\n")
    monkeypatch.setattr(protocol_gen, "OUTPUT", stale)
    assert protocol_gen.main(["--check"]) == 1
    assert protocol_gen.main([]) == 0
    assert protocol_gen.main(["--check"]) == 0

"""weir.runtime.env: a container's environment and argv as kubelet builds them, with Kubernetes'
``$(VAR)`` expansion (the cases of Kubernetes' own expansion tests: defined, undefined left as
written, ``$$`` escapes, partial and nested syntax)."""

from __future__ import annotations

from typing import Any

import pytest

from weir.api.pod import Pod, parse_pod
from weir.runtime.env import DEFAULT_PATH, container_argv, container_env, expand

CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(("text", "expected"), [
    ("$(VAR_A)", "A"),
    ("$(VAR_A)-$(VAR_A)", "A-A"),
    ("___$(VAR_B)___", "___B___"),
    ("$(VAR_A)$(VAR_B)$(VAR_C)", "ABC"),  # adjacent references
    ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("foo$(VAR_EMPTY)bar", "foobar"),  # defined but empty: expands to nothing
    ("$(VAR_DNE)", "$(VAR_DNE)"),  # undefined: left as written
    ("x$(VAR_DNE)y$(VAR_A)", "x$(VAR_DNE)yA"),
    ("$(VAR_REF)", "$(VAR_A)"),  # a value is not expanded again
    ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),  # $$ escapes
    ("$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("f000-$$VAR_A", "f000-$VAR_A"),
    ("$$$$$$(VAR_A)", "$$$(VAR_A)"),  # even: all escapes
    ("$$$$$$$(VAR_A)", "$$$A"),  # odd: the last $ starts a reference
    ("$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("foo\\$(VAR_C)bar", "foo\\Cbar"),  # backslashes are not escapes
    ("$VAR_A", "$VAR_A"),  # bare operator
    ("$VAR_A)", "$VAR_A)"),
    ("${VAR_A}", "${VAR_A}"),  # shell syntax is not Kubernetes syntax
    ("$?_boo_$!", "$?_boo_$!"),
    ("$(", "$("),  # partial syntax
    ("$(VAR_C)_______$(", "C_______$("),
    ("$(VAR_B)_______$(A", "B_______$(A"),
    ("foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("--$($($($($--", "--$($($($($--"),
    ("$(VAR_A)foobarzab$", "Afoobarzab$"),  # a $ at the end stays
    ("$(1A)", "$(1A)"),  # not a name any env var can have: left as written
    ("$()", "$()"),
    ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),  # the name runs to the first ")": nested is not expanded
    ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("$(foo$$var)", "$(foo$$var)"),  # $$ inside a name is part of the name
    ("\n", "\n"),
])
def test_expand_follows_kubernetes(text: str, expected: str) -> None:
    assert expand(text, CONTEXT) == expected


def test_expand_names_may_hold_dots_and_dashes() -> None:
    assert expand("$(my.var-1)/$(other)", {"my.var-1": "x", "other": "y"}) == "x/y"


def pod(env: list[dict[str, Any]], **container: Any) -> Pod:
    return parse_pod({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "uid-7", "labels": {"app": "web"},
                     "annotations": {"odd": "$(A)"}},
        "spec": {"serviceAccountName": "cart",
                 "containers": [{"name": "app", "command": ["/bin/app"], "env": env, **container}]},
    })


def env_of(p: Pod, **kwargs: Any) -> dict[str, str]:
    return container_env(p, p.spec.containers[0], kwargs.pop("status", {"podIP": "10.213.0.9"}), **kwargs)


def test_values_expand_earlier_variables_only() -> None:
    p = pod([{"name": "LATER_REF", "value": "<$(B)>"}, {"name": "A", "value": "a"},
             {"name": "B", "value": "$(A)-b"}, {"name": "C", "value": "$(B)+$(A)+$(NOPE)"},
             {"name": "ESCAPED", "value": "$$(A)"}])
    env = env_of(p)
    assert env["LATER_REF"] == "<$(B)>"
    assert env["B"] == "a-b"
    assert env["C"] == "a-b+a+$(NOPE)"
    assert env["ESCAPED"] == "$(A)"


def test_a_redefined_variable_takes_its_last_value() -> None:
    env = env_of(pod([{"name": "A", "value": "one"}, {"name": "B", "value": "$(A)"}, {"name": "A", "value": "two"},
                      {"name": "C", "value": "$(A)"}]))
    assert (env["A"], env["B"], env["C"]) == ("two", "one", "two")


def test_field_refs_resolve_and_are_not_expanded() -> None:
    p = pod([{"name": "A", "value": "expanded"},
             {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
             {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
             {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
             {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
             {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
             {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
             {"name": "ODD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['odd']"}}},
             {"name": "REF", "value": "$(NAME).$(NS)"}])
    env = env_of(p, node_ip="192.0.2.1")
    assert (env["NAME"], env["NS"], env["UID"], env["SA"], env["IP"], env["APP"]) == (
        "web-1", "shop", "uid-7", "cart", "10.213.0.9", "web")
    assert env["ODD"] == "$(A)"  # the annotation's text, verbatim, though A is defined
    assert env["REF"] == "web-1.shop"  # a later literal sees resolved fieldRefs


def test_path_hostname_and_pod_dir() -> None:
    p = pod([{"name": "WHERE", "value": "$(WEIR_POD_DIR)/token"}])
    plain = env_of(p)
    assert plain["PATH"] == DEFAULT_PATH
    assert plain["HOSTNAME"] == "web-1"
    assert "WEIR_POD_DIR" not in plain
    assert plain["WHERE"] == "$(WEIR_POD_DIR)/token"
    given = env_of(p, tools_dir="/var/lib/weir/bin", pod_dir="/var/lib/weir/pods/uid-7")
    assert given["PATH"] == f"/var/lib/weir/bin:{DEFAULT_PATH}"
    assert given["WEIR_POD_DIR"] == "/var/lib/weir/pods/uid-7"
    assert given["WHERE"] == "/var/lib/weir/pods/uid-7/token"


def test_argv_expands_command_and_args_from_the_final_environment() -> None:
    p = pod([{"name": "A", "value": "a"}, {"name": "B", "value": "$(A)b"}],
            command=["/bin/app", "--a=$(A)"], args=["$(B)", "$$(A)", "$(MISSING)", "$(A)$(B)"])
    env = env_of(p)
    assert container_argv(p.spec.containers[0], env) == ["/bin/app", "--a=a", "ab", "$(A)", "$(MISSING)", "aab"]


def test_argv_without_env_keeps_references() -> None:
    p = pod([], command=["echo"], args=["$(X)"])
    assert container_argv(p.spec.containers[0], {}) == ["echo", "$(X)"]

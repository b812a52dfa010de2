"""The classic builder's pure parts: the Dockerfile parser, word expansion, `.dockerignore`,
what metadata instructions do to the Config, and the cache key."""

from __future__ import annotations

import pytest

from engine.errors import InvalidParameter
from moor.building.dockerfile import parse
from moor.building.dockerignore import IgnoreMatcher
from moor.building.instructions import (
    StageState,
    apply,
    cache_key,
    parse_duration,
    run_argv,
    run_build_args,
    run_env,
    saved_run_cmd,
)
from moor.building.shellwords import expand, expand_words, split_words

# --- the parser ---------------------------------------------------------------------------


def test_parse_stages_continuations_comments_and_forms() -> None:
    text = ("# syntax=docker/dockerfile:1\n"
            "ARG V=1\n"
            "\n"
            "FROM busybox:$V AS Build\n"
            "run echo one \\\n"
            "# a comment inside the continuation vanishes\n"
            "    two\n"
            'CMD ["sh", "-c", "x"]\n'
            "COPY --from=build --chown=1:2 a b /dst/\n"
            "FROM scratch\n"
            "ENTRYPOINT [not json\n")
    df = parse(text)
    assert [m.original for m in df.meta_args] == ["ARG V=1"]
    first, second = df.stages
    assert (first.base, first.name, second.base, second.name) == ("busybox:$V", "build",
                                                                  "scratch", "")
    run, cmd, copy = first.instructions
    assert run.keyword == "RUN" and run.rest == "echo one     two" and not run.json
    assert run.line == 5
    assert cmd.json and cmd.args == ("sh", "-c", "x")
    assert copy.flags == {"from": "build", "chown": "1:2"} and copy.rest == "a b /dst/"
    assert not second.instructions[0].json  # not valid JSON: the shell form
    assert second.instructions[0].args == ("[not json",)


def test_escape_directive_changes_the_continuation() -> None:
    df = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo done\n")
    assert df.escape == "`"
    assert df.stages[0].instructions[0].rest == "dir c:\\   && echo done"
    # After the first instruction, a directive is only a comment.
    assert parse("FROM x\n# escape=`\nRUN a \\\n b\n").stages[0].instructions[0].rest == "a  b"


@pytest.mark.parametrize(("text", "message"), [
    ("FROM x\nFOO bar\n", "dockerfile parse error on line 2: unknown instruction: FOO"),
    ("RUN x\n", "no build stage in current context"),
    ("FROM x\nCOPY --nope a b\n", "Unknown flag: nope"),
    ("FROM x\nSHELL sh -c\n", "SHELL requires the arguments to be in JSON form"),
    ("FROM x\nONBUILD ONBUILD RUN x\n", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("# escape=x\nFROM x\n", "invalid escape token 'x' does not match ` or \\"),
    ("FROM a AS one\nFROM b AS one\n", "duplicate name one"),
    ("# only a comment\n", "the Dockerfile (Dockerfile) cannot be empty"),
    ("FROM x\nENV\n", "ENV requires at least one argument"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse(text)
    assert message in err.value.message


# --- word expansion -----------------------------------------------------------------------

ENV = {"A": "alpha", "EMPTY": "", "N": "1"}


@pytest.mark.parametrize(("word", "out"), [
    ("$A-${A}", "alpha-alpha"),
    ("${MISSING:-dflt} ${EMPTY:-e} ${EMPTY-unset}", "dflt e "),
    ("${A:+set}${MISSING:+no}", "set"),
    ("'$A' \"$A\" \\$A", "$A alpha $A"),
    ('"a \\"q\\" \\x"', 'a "q" \\x'),
    ("${A:-${N}}x$", "alphax$"),
    ("$1x", "x"),
])
def test_expand(word: str, out: str) -> None:
    assert expand(word, ENV) == out


def test_expand_errors_and_words() -> None:
    with pytest.raises(InvalidParameter, match="must be set"):
        expand("${MISSING:?must be set}", ENV)
    with pytest.raises(InvalidParameter, match="single-quote"):
        expand("'open", ENV)
    assert split_words('a="b c" d') == ['a="b c"', "d"]
    assert expand_words("80/tcp  '$A b'", ENV) == ["80/tcp", "$A b"]
    assert expand("`$A", ENV, escape="`") == "$A"


# --- .dockerignore ------------------------------------------------------------------------

@pytest.mark.parametrize(("patterns", "path", "excluded"), [
    ("secret.txt", "secret.txt", True),
    ("secret.txt", "sub/secret.txt", False),
    ("/secret.txt", "secret.txt", True),
    ("**/*.log", "a/b/c.log", True),
    ("**/*.log", "c.log", True),
    ("*.log", "a/c.log", False),
    ("logs", "logs/deep/x", True),  # a parent directory matches
    ("logs\n!logs/keep.log", "logs/keep.log", False),
    ("logs\n!logs/keep.log", "logs/drop", True),
    ("*\n!src\nsrc/*.tmp", "src/a.tmp", True),
    ("*\n!src\nsrc/*.tmp", "src/a.py", False),
    ("# comment\n\n a?c ", "abc", True),
    ("a?c", "a/c", False),
    ("[a-c]x", "bx", True),
    ("[^a-c]x", "bx", False),
    ("dir/**", "dir", False),
    ("dir/**", "dir/x/y", True),
    ("./a/../b", "b", True),
    ("\\*x", "*x", True),
])
def test_dockerignore(patterns: str, path: str, excluded: bool) -> None:
    assert IgnoreMatcher.from_text(patterns).excluded(path) is excluded


def test_dockerignore_exceptions_flag() -> None:
    assert IgnoreMatcher.from_text("a\n!a/b").has_exceptions()
    assert not IgnoreMatcher.from_text("a\n# !b").has_exceptions()
    assert not IgnoreMatcher.from_text("").excluded("anything")


# --- instructions and the cache key -------------------------------------------------------

def _stage(**kw: object) -> StageState:
    base = {"config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]}, "image_id": "sha256:" + "a" * 64}
    return StageState(**{**base, **kw})  # type: ignore[arg-type]


def _line(text: str) -> object:
    return parse("FROM x\n" + text).stages[0].instructions[0]


def test_metadata_instructions_change_the_config() -> None:
    state = _stage()
    for text in ['ENV A=1 B="two words"', "ENV C $A-x", "LABEL k=v", "WORKDIR app",
                 "WORKDIR ../srv/$A", "USER nobody", "EXPOSE 80 7000-7001/udp",
                 'VOLUME ["/data"]', "STOPSIGNAL SIGINT",
                 "HEALTHCHECK --interval=1m30s --retries=3 CMD wget -q localhost",
                 "ONBUILD RUN echo hi", 'SHELL ["/bin/bash", "-c"]', "CMD echo hi"]:
        state, _ = apply(state, _line(text))  # type: ignore[arg-type]
    cfg = state.config
    assert cfg["Env"] == ["PATH=/bin", "A=1", "B=two words", "C=1-x"]
    assert cfg["Labels"] == {"k": "v"} and cfg["User"] == "nobody"
    assert cfg["WorkingDir"] == "/srv/1"
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "7000/udp": {}, "7001/udp": {}}
    assert cfg["Volumes"] == {"/data": {}} and cfg["StopSignal"] == "SIGINT"
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost"],
                                  "Interval": 90_000_000_000, "Retries": 3}
    assert cfg["OnBuild"] == ["RUN echo hi"]
    assert cfg["Cmd"] == ["/bin/bash", "-c", "echo hi"]  # the SHELL applies to shell forms


def test_entrypoint_resets_an_inherited_cmd_only() -> None:
    state, _ = apply(_stage(), _line('ENTRYPOINT ["run"]'))  # type: ignore[arg-type]
    assert state.config["Cmd"] is None and state.config["Entrypoint"] == ["run"]
    state, _ = apply(_stage(), _line("CMD x"))  # type: ignore[arg-type]
    state, _ = apply(state, _line('ENTRYPOINT ["run"]'))  # type: ignore[arg-type]
    assert state.config["Cmd"] == ["/bin/sh", "-c", "x"]


def test_args_scope_values_and_the_run_encoding() -> None:
    state = _stage(build_args={"GIVEN": "cli", "http_proxy": "http://p"}, meta={"M": "meta"})
    state, cmd = apply(state, _line("ARG GIVEN=dflt DEF=d M UNSET"))  # type: ignore[arg-type]
    assert cmd == ["/bin/sh", "-c", "#(nop) ARG GIVEN=dflt DEF=d M UNSET"]
    assert state.args == {"GIVEN": "cli", "DEF": "d", "M": "meta", "UNSET": None}
    state, _ = apply(state, _line("ENV DEF=from-env"))  # type: ignore[arg-type]
    used = run_build_args(state)
    assert used == ["GIVEN=cli", "M=meta"]  # ENV shadows DEF; unset and proxy args left out
    argv = run_argv(state, _line("RUN make $GIVEN"))  # type: ignore[arg-type]
    assert saved_run_cmd(argv, used) == ["|2", "GIVEN=cli", "M=meta", "/bin/sh", "-c",
                                         "make $GIVEN"]
    assert run_env(state) == ["PATH=/bin", "DEF=from-env", "GIVEN=cli", "M=meta",
                              "http_proxy=http://p"]
    assert run_argv(state, _line('RUN ["a", "b"]')) == ["a", "b"]  # type: ignore[arg-type]


def test_cache_key_follows_the_parent_and_every_config_field() -> None:
    config = {"Cmd": ["/bin/sh", "-c", "#(nop) ENV A=1"], "Env": ["A=1"]}
    key = cache_key("sha256:p", config)
    assert key == cache_key("sha256:p", dict(reversed(list(config.items()))))
    assert key != cache_key("sha256:q", config)
    assert key != cache_key("sha256:p", {**config, "Env": ["A=2"]})
    assert key != cache_key("sha256:p", {**config, "WorkingDir": "/x"})


def test_durations() -> None:
    assert parse_duration("1m30s", "x") == 90_000_000_000
    assert parse_duration("250ms", "x") == 250_000_000
    with pytest.raises(InvalidParameter):
        parse_duration("10", "--interval")

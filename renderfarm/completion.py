"""`renderfarm completion bash|zsh`: a shell completion script, made from the command line's own parser.

    eval "$(renderfarm completion bash)"      # in ~/.bashrc
    eval "$(renderfarm completion zsh)"       # in ~/.zshrc (zsh runs the bash script through bashcompinit)

The script holds each command's sub-commands and options as word lists, so completing costs no Python start-up;
arguments that are not options complete as file names (pictures, manifests, folders).
"""

from __future__ import annotations

import argparse
import shlex

__all__ = ["completion_script"]


def _words(parser: argparse.ArgumentParser) -> list[str]:
    """The parser's option strings and sub-command names (one level down)."""
    words: list[str] = []
    for action in parser._actions:  # argparse has no public view of a parser's arguments
        if isinstance(action, argparse._SubParsersAction):
            words.extend(action.choices)
        else:
            words.extend(action.option_strings)
    return words


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _bash(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    function = "_" + prog.replace("-", "_") + "_complete"
    cases = []
    for name, command in _commands(parser).items():
        words = _words(command)
        # A nested command (db upgrade, model build-tiny): its sub-commands' options too.
        for sub in _commands(command).values():
            words.extend(word for word in _words(sub) if word not in words)
        cases.append(f"        {shlex.quote(name)}) words={shlex.quote(' '.join(words))} ;;")
    top = " ".join(_words(parser))
    return "\n".join(
        [
            f'# bash completion for {prog}: eval "$({prog} completion bash)"',
            f"{function}() {{",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" words=""',
            '    if [ "$COMP_CWORD" -eq 1 ]; then',
            f'        COMPREPLY=($(compgen -W {shlex.quote(top)} -- "$cur"))',
            "        return 0",
            "    fi",
            '    case "${COMP_WORDS[1]}" in',
            *cases,
            "    esac",
            '    if [[ "$cur" == -* ]]; then',
            '        COMPREPLY=($(compgen -W "$words" -- "$cur"))',
            "    else",
            '        local subs="" word',
            '        for word in $words; do [[ "$word" == -* ]] || subs="$subs $word"; done',
            '        COMPREPLY=($(compgen -W "$subs" -- "$cur") $(compgen -f -- "$cur"))',
            "    fi",
            "}",
            f"complete -o filenames -F {function} {prog}",
            "",
        ]
    )


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` ("bash" or "zsh")."""
    script = _bash(parser)
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script

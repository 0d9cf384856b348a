"""``cascade models``: the registry's list, add, show, promote and rollback."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.registry import Registry
from serving.vocabulary import ROLES


def _models(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    if args.action == "list":
        current = {role: registry.current(role) for role in ROLES}
        for entry in registry.entries():
            roles = [role for role, e in current.items() if e and (e.name, e.version) == (entry.name, entry.version)]
            marker = f"  <- current {', '.join(roles)}" if roles else ""
            print(
                f"{entry.name}:{entry.version}  {entry.manifest.role}  "
                f"dev accuracy {entry.manifest.metrics.get('dev_accuracy')}{marker}"
            )
    elif args.action == "add":
        entry = registry.add(args.target)
        print(f"added {entry.name}:{entry.version} at {entry.path}")
    elif args.action == "show":
        name, _, version = args.target.partition(":")
        print(registry.get(name, version).manifest.model_dump_json(indent=2))
    elif args.action == "promote":
        name, _, version = args.target.partition(":")
        entry = registry.get(name, version)
        role = args.role or entry.manifest.role
        registry.promote(role, name, version, reason=args.reason)
        print(f"{role} -> {name}:{version}")
    elif args.action == "rollback":
        entry = registry.rollback(args.target)
        print(f"{args.target} -> {entry.name}:{entry.version}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="the model registry: list, add, show, promote, rollback")
    models.add_argument("action", choices=["list", "add", "show", "promote", "rollback"])
    models.add_argument(
        "target", nargs="?", default="", help="add: a folder; show/promote: NAME:VERSION; rollback: a role"
    )
    models.add_argument("--registry", required=True, type=Path, help="registry root folder")
    models.add_argument("--reason", default="", help="promote: why, kept in the pointer's history")
    models.add_argument(
        "--role", choices=ROLES, help="promote: the role to serve it in (default: its own; a student may be a middle)"
    )
    models.set_defaults(func=_models)

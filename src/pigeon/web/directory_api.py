"""The HTTP API's directory: aliases, mailing lists and users' attributes, read and edited by
administrators through ``pigeon.directory.admin``, the code ``pigeon alias``, ``pigeon list``
and ``pigeon user set`` use. Entries of the configuration file are shown and refused for
editing (409), as the commands refuse them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, HTTPException, Path, Response

from pigeon.directory import DirectoryStore
from pigeon.directory.admin import (
    AliasEntry,
    DirectoryAdmin,
    DirectoryAdminError,
    ListEntry,
    Problem,
    UserEntry,
    describe_route,
)
from pigeon.queue.control import announce

from . import models
from .access import Admin, Context
from .context import WebContext

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": models.Error, "description": "not an address, or not at a domain served"},
    401: {"model": models.Error, "description": "not logged in, or no valid token"},
    403: {"model": models.Error, "description": "not an administrator, or no CSRF token"},
    404: {"model": models.Error, "description": "no such entry"},
    409: {"model": models.Error, "description": "defined in the configuration file, or a clash"},
}
router = APIRouter(prefix="/api", responses=_ERRORS, tags=["directory"])

_STATUS = {
    Problem.INVALID: 400,
    Problem.NOT_OURS: 400,
    Problem.IN_CONFIG: 409,
    Problem.CONFLICT: 409,
    Problem.UNKNOWN: 404,
}
_T = TypeVar("_T")
Address = Annotated[str, Path(max_length=320, description="a mail address")]


def _with_admin(context: WebContext, work: Callable[[DirectoryAdmin], _T]) -> _T:
    store = DirectoryStore(context.config.directory_db)
    try:
        return work(DirectoryAdmin(context.config, store))
    except DirectoryAdminError as error:
        raise HTTPException(_STATUS[error.problem], str(error)) from None
    finally:
        store.close()
        if store.changed:
            # Every worker (this one too: the handler runs in a thread, its loop answers).
            announce(context.config.data_dir, "directory")


def _alias(entry: AliasEntry) -> models.AliasModel:
    return models.AliasModel(
        address=entry.address, targets=list(entry.targets), source=entry.source
    )


def _list(entry: ListEntry) -> models.ListModel:
    spec = entry.spec
    return models.ListModel(
        address=entry.address,
        owner=spec.owner,
        posting=spec.posting,
        members=list(spec.members),
        source=entry.source,
    )


def _user(admin: DirectoryAdmin, entry: UserEntry) -> models.UserAttributes:
    spec = entry.spec
    return models.UserAttributes(
        address=entry.address,
        name=spec.name,
        quota=spec.quota,
        addresses=list(spec.addresses),
        forward=list(spec.forward),
        moved_to=spec.moved_to,
        source=entry.source,
        route=str(describe_route(admin.route(entry.address))["route"]),
    )


# -- aliases --------------------------------------------------------------------------------------
@router.get("/aliases", response_model=list[models.AliasModel])
def aliases(context: Context, _admin: Admin) -> list[models.AliasModel]:
    """Every alias, from the configuration file and from directory.db."""
    return _with_admin(context, lambda admin: [_alias(e) for e in admin.aliases()])


@router.put("/aliases/{address}", response_model=models.AliasModel)
def put_alias(
    context: Context, _admin: Admin, address: Address, change: models.AliasChange
) -> models.AliasModel:
    """Make the alias, or give it these targets (replacing the ones it had)."""
    return _with_admin(
        context, lambda admin: _alias(admin.add_alias(address, change.targets, replace=True))
    )


@router.delete("/aliases/{address}", status_code=204)
def delete_alias(context: Context, _admin: Admin, address: Address) -> Response:
    _with_admin(context, lambda admin: admin.remove_alias(address))
    return Response(status_code=204)


# -- lists ----------------------------------------------------------------------------------------
@router.get("/lists", response_model=list[models.ListModel])
def lists(context: Context, _admin: Admin) -> list[models.ListModel]:
    return _with_admin(context, lambda admin: [_list(e) for e in admin.lists()])


@router.get("/lists/{address}", response_model=models.ListModel)
def get_list(context: Context, _admin: Admin, address: Address) -> models.ListModel:
    return _with_admin(context, lambda admin: _list(admin.mailing_list(address)))


@router.put("/lists/{address}", response_model=models.ListModel)
def put_list(
    context: Context, _admin: Admin, address: Address, change: models.ListChange
) -> models.ListModel:
    """Make the list, or set its owner, posting rule and members (the whole membership)."""

    def work(admin: DirectoryAdmin) -> models.ListModel:
        try:
            admin.mailing_list(address)
        except DirectoryAdminError as error:
            if error.problem is not Problem.UNKNOWN:
                raise
            entry = admin.create_list(
                address, owner=change.owner, posting=change.posting, members=change.members
            )
        else:
            entry = admin.change_list(
                address, owner=change.owner, posting=change.posting, members=change.members
            )
        return _list(entry)

    return _with_admin(context, work)


@router.delete("/lists/{address}", status_code=204)
def delete_list(context: Context, _admin: Admin, address: Address) -> Response:
    _with_admin(context, lambda admin: admin.delete_list(address))
    return Response(status_code=204)


# -- users' attributes ----------------------------------------------------------------------------
@router.get("/users/{address}/attributes", response_model=models.UserAttributes)
def user_attributes(context: Context, _admin: Admin, address: Address) -> models.UserAttributes:
    """Full name, quota, extra addresses, forward, moved-to, and where mail to it goes now."""
    return _with_admin(context, lambda admin: _user(admin, admin.user(address)))


@router.patch("/users/{address}/attributes", response_model=models.UserAttributes)
def patch_user_attributes(
    context: Context, _admin: Admin, address: Address, change: models.UserAttributesChange
) -> models.UserAttributes:
    """Change what is given; what is left out stays ("" clears moved_to, [] forward)."""

    def work(admin: DirectoryAdmin) -> models.UserAttributes:
        current = admin.user(address)
        extra = None if change.addresses is None else set(change.addresses)
        have = set(current.spec.addresses)
        entry = admin.set_user(
            address,
            name=change.name,
            quota=change.quota,
            forward=change.forward,
            moved_to=change.moved_to,
            add_addresses=[] if extra is None else sorted(extra - have),
            remove_addresses=[] if extra is None else sorted(have - extra),
        )
        return _user(admin, entry)

    return _with_admin(context, work)

"""
The RabbitMQ management HTTP API boundary: the only module that imports httpx.

Reads what AMQP cannot tell (the broker version, every queue with its
arguments and effective policy, bindings, policies, operator policies) and
writes policies. HTTP failures become `reliable.errors.ManagementAPIError`.
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from reliable import errors
from reliable.redact import redact_url

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """Turn ``"3.10.8"`` (or ``"4.2.0-rc.1"``) into ``(3, 10, 8)``."""
    match = _VERSION.match(text.strip())
    if not match:
        msg = f"cannot read a RabbitMQ version from {text!r}"
        raise ValueError(msg)
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _vhost(vhost: str) -> str:
    return quote(vhost, safe="")


class ManagementClient:
    """
    A small synchronous client for the management API.

    Args:
        url: ``http://user:password@host:15672`` (credentials in the URL).
        timeout_seconds: Per-request timeout.
    """

    def __init__(self, url: str, *, timeout_seconds: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = (
                f"invalid management URL {redact_url(url)!r}; "
                "expected http://user:password@host:15672"
            )
            raise errors.ConfigError(msg, key="management_url")
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port:
            netloc += f":{parts.port}"
        self._base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._shown = redact_url(url)
        auth = (parts.username or "guest", parts.password or "guest")
        self._client = httpx.Client(auth=auth, timeout=timeout_seconds)

    def __repr__(self) -> str:
        return f"ManagementClient({self._shown!r})"

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # -- low level ------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        url = f"{self._base}/api/{path}"
        shown = f"{self._shown.rstrip('/')}/api/{path}"
        try:
            response = self._client.request(method, url, json=json, params=params)
        except httpx.HTTPError as exc:
            msg = (
                f"cannot reach the RabbitMQ management API at {self._shown} "
                f"({type(exc).__name__}); check that the management plugin is enabled "
                "and the URL is right"
            )
            raise errors.ManagementAPIError(msg, url=shown) from None
        if response.status_code == 401:
            msg = (
                f"the management API at {self._shown} refused the login; "
                "check the user and password in the management URL"
            )
            raise errors.ManagementAPIError(msg, status=401, url=shown)
        if response.status_code >= 400:
            try:
                reason = response.json().get("reason", response.text)
            except ValueError:
                reason = response.text
            msg = f"management API {method} {path} failed with {response.status_code}: {reason}"
            raise errors.ManagementAPIError(msg, status=response.status_code, url=shown)
        if not response.content:
            return None
        return response.json()

    def _get_list(self, path: str) -> list[dict[str, Any]]:
        data = self._request("GET", path)
        if not isinstance(data, list):
            msg = f"management API GET {path} returned {type(data).__name__}, expected a list"
            raise errors.ManagementAPIError(msg, url=path)
        return data

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            data = self._request("GET", path)
        except errors.ManagementAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return data if isinstance(data, dict) else None

    # -- reads ------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        data = self._request("GET", "overview")
        return data if isinstance(data, dict) else {}

    def broker_version(self) -> tuple[int, int, int]:
        """The RabbitMQ version, e.g. ``(3, 10, 8)``."""
        return parse_version(str(self.overview().get("rabbitmq_version", "")))

    def vhosts(self) -> list[dict[str, Any]]:
        return self._get_list("vhosts")

    def vhost_exists(self, vhost: str) -> bool:
        return self._get_or_none(f"vhosts/{_vhost(vhost)}") is not None

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        """Every queue of *vhost* with ``arguments``, ``type``, ``policy``, ``effective_policy_definition``."""
        return self._get_list(f"queues/{_vhost(vhost)}")

    def queue_definitions(self, vhost: str) -> list[dict[str, Any]]:
        """Every queue of *vhost* with only its declaration and counts (fast for many queues)."""
        columns = "name,type,durable,auto_delete,exclusive,arguments,messages,consumers"
        data = self._request(
            "GET", f"queues/{_vhost(vhost)}", params={"columns": columns}
        )
        return data if isinstance(data, list) else []

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(f"queues/{_vhost(vhost)}/{quote(name, safe='')}")

    def exchanges(self, vhost: str) -> list[dict[str, Any]]:
        return self._get_list(f"exchanges/{_vhost(vhost)}")

    def bindings(self, vhost: str) -> list[dict[str, Any]]:
        return self._get_list(f"bindings/{_vhost(vhost)}")

    def policies(self, vhost: str) -> list[dict[str, Any]]:
        return self._get_list(f"policies/{_vhost(vhost)}")

    def operator_policies(self, vhost: str) -> list[dict[str, Any]]:
        try:
            return self._get_list(f"operator-policies/{_vhost(vhost)}")
        except errors.ManagementAPIError as exc:
            if exc.status in (401, 403, 404):
                return []  # not visible to this user, or not supported: nothing to merge
            raise

    # -- writes -----------------------------------------------------------------

    def put_policy(
        self,
        vhost: str,
        name: str,
        *,
        pattern: str,
        definition: dict[str, Any],
        priority: int = 0,
        apply_to: str = "all",
    ) -> None:
        body = {
            "pattern": pattern,
            "definition": definition,
            "priority": priority,
            "apply-to": apply_to,
        }
        self._request(
            "PUT", f"policies/{_vhost(vhost)}/{quote(name, safe='')}", json=body
        )

    def delete_policy(self, vhost: str, name: str) -> None:
        self._request("DELETE", f"policies/{_vhost(vhost)}/{quote(name, safe='')}")

    def create_vhost(self, vhost: str) -> None:
        self._request("PUT", f"vhosts/{_vhost(vhost)}", json={})

    def delete_vhost(self, vhost: str) -> None:
        self._request("DELETE", f"vhosts/{_vhost(vhost)}")

    def grant_all(self, vhost: str, user: str) -> None:
        body = {"configure": ".*", "write": ".*", "read": ".*"}
        self._request(
            "PUT", f"permissions/{_vhost(vhost)}/{quote(user, safe='')}", json=body
        )

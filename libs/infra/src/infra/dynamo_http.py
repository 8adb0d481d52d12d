"""A lean DynamoDB data-plane client: the JSON protocol over keep-alive HTTP, SigV4-signed.

Why: every message costs history two conditional writes, and aiobotocore spends about 1 ms of
CPU per call here (request model validation, serializers, event hooks, retries handler) --
the largest share of history's CPU per message. This client speaks the same wire protocol
(`X-Amz-Target: DynamoDB_20120810.<Operation>`, `application/x-amz-json-1.0`) with a cached
SigV4 signing key and orjson, for the operations the services use on the hot path. It accepts
the same keyword arguments and returns the same response dictionaries as the botocore client,
and raises botocore's `ClientError` with the same error codes, so adapters do not change.
Control-plane calls (provisioning) keep aiobotocore (`infra.store.open_dynamo_admin`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import random
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

API_VERSION = "DynamoDB_20120810"
CONTENT_TYPE = "application/x-amz-json-1.0"
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)


class SigV4:
    """AWS Signature Version 4 for one service, region and key pair (signing key cached daily)."""

    def __init__(self, access_key: str, secret_key: str, region: str, service: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.service = service
        self._day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            key = ("AWS4" + self.secret_key).encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, key
        return self._key

    def headers(
        self, host: str, target: str, body: bytes, now: dt.datetime | None = None
    ) -> dict[str, str]:
        moment = now or dt.datetime.now(dt.UTC)
        amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        payload_hash = hashlib.sha256(body).hexdigest()
        canonical = (
            "POST\n/\n\n"
            f"content-type:{CONTENT_TYPE}\nhost:{host}\n"
            f"x-amz-date:{amz_date}\nx-amz-target:{target}\n\n"
            "content-type;host;x-amz-date;x-amz-target\n"
            f"{payload_hash}"
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
            f"{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "Content-Type": CONTENT_TYPE,
            "X-Amz-Date": amz_date,
            "X-Amz-Target": target,
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                f"SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
                f"Signature={signature}"
            ),
        }


class DynamoHttpClient:
    """The subset of the botocore DynamoDB client the services use, over plain HTTP."""

    def __init__(
        self,
        endpoint: str,
        region: str,
        access_key: str,
        secret_key: str,
        pool_size: int = 64,
        timeout_seconds: float = 10.0,
        max_attempts: int = 6,
    ) -> None:
        if not endpoint:
            endpoint = f"https://dynamodb.{region}.amazonaws.com"
        parts = urlsplit(endpoint)
        self.url = f"{parts.scheme}://{parts.netloc}/"
        self.host = parts.netloc
        self.signer = SigV4(access_key, secret_key, region, "dynamodb")
        self.max_attempts = max_attempts
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=timeout_seconds, connect=3),
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        await self._session.close()

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One API call with retries on throttling, 5xx and connection errors (backoff)."""
        body = orjson.dumps(params)
        target = f"{API_VERSION}.{operation}"
        for attempt in range(1, self.max_attempts + 1):
            headers = self.signer.headers(self.host, target, body)
            try:
                async with self._session.post(self.url, data=body, headers=headers) as response:
                    raw = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if attempt == self.max_attempts:
                    raise ClientError(
                        {"Error": {"Code": "ConnectionError", "Message": str(exc)}}, operation
                    ) from exc
                await self._backoff(attempt)
                continue
            if status == 200:
                result: dict[str, Any] = orjson.loads(raw) if raw else {}
                return result
            code, message = _error_of(raw, status)
            if (code in RETRYABLE_CODES or status >= 500) and attempt < self.max_attempts:
                await self._backoff(attempt)
                continue
            error: Any = {
                "Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status},
            }
            raise ClientError(error, operation)
        raise AssertionError("unreachable")

    @staticmethod
    async def _backoff(attempt: int) -> None:
        await asyncio.sleep(min(2.0, 0.05 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))

    # The botocore method names, keyword arguments as in the API reference.
    async def put_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("PutItem", params)

    async def get_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("GetItem", params)

    async def delete_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("DeleteItem", params)

    async def update_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("UpdateItem", params)

    async def query(self, **params: Any) -> dict[str, Any]:
        return await self.call("Query", params)

    async def scan(self, **params: Any) -> dict[str, Any]:
        return await self.call("Scan", params)

    async def batch_write_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("BatchWriteItem", params)

    async def batch_get_item(self, **params: Any) -> dict[str, Any]:
        return await self.call("BatchGetItem", params)

    async def describe_table(self, **params: Any) -> dict[str, Any]:
        return await self.call("DescribeTable", params)

    async def list_tables(self, **params: Any) -> dict[str, Any]:
        return await self.call("ListTables", params)


def _error_of(raw: bytes, status: int) -> tuple[str, str]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"HTTP{status}", raw[:200].decode(errors="replace")
    kind = str(body.get("__type", f"HTTP{status}"))
    message = str(body.get("message") or body.get("Message") or "")
    return kind.rsplit("#", 1)[-1], message

"""Who may log in to the sandbox, and how a device gets a user of its own (docs/sandbox.md).

Cumulocity's device registration, as its documentation describes it (sources in docs/sandbox.md,
"Device registration"):

1. An operator registers the device's ID (Device Management > Registration): the request shows
   "Waiting for connection" (`WAITING_FOR_CONNECTION`).
2. The device connects as the bootstrap user `management/devicebootstrap`, with its ID as client
   id, subscribes to `s/dcr` and publishes empty messages on `s/ucr` (or POSTs its ID to
   `/devicecontrol/deviceCredentials`): the request turns "Pending acceptance".
3. The operator clicks Accept (`ACCEPTED`); at the device's next request the platform creates a
   device user and answers `70,<tenantID>,<username>,<password>` on `s/dcr`.

`Accounts` holds the tenant user, the bootstrap user and the device users made in step 3, each
with its role; `Registrations` holds the list. Both live on the sandbox's event loop.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from dashkanban.sandbox.ca import SandboxCa

log = logging.getLogger(__name__)

Role = Literal["tenant", "device", "bootstrap"]
Status = Literal["WAITING_FOR_CONNECTION", "PENDING_ACCEPTANCE", "ACCEPTED"]

# The bootstrap user is a user of the management tenant (lifecycle-mqtt.md; Cumulocity's own
# reference agents use exactly this name, see docs/sandbox.md).
BOOTSTRAP_USERNAME = "management/devicebootstrap"
# Device users made by registration are named device_<external id> (lifecycle-rest.md's example
# "device_0000000017b769d5").
DEVICE_USER_PREFIX = "device_"
MAX_REGISTRATIONS = 10_000  # bounded: a status page list, not a database


class RegistrationError(Exception):
    """A registration request that cannot be carried out; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Accounts:
    """User names with their password and role; passwords compared in constant time."""

    def __init__(self, tenant_username: str, tenant_password: str,
                 bootstrap_password: str | None) -> None:
        self._users: dict[str, tuple[bytes, Role]] = {
            tenant_username: (tenant_password.encode(), "tenant"),
        }
        if bootstrap_password:
            self._users[BOOTSTRAP_USERNAME] = (bootstrap_password.encode(), "bootstrap")

    def set_tenant_password(self, username: str, password: str) -> None:
        """The tenant user's password changed (`Sandbox.set_password`): logins from now on."""
        self._users[username] = (password.encode(), "tenant")

    def add_device_user(self, username: str, password: str) -> None:
        self._users[username] = (password.encode(), "device")

    def role(self, username: str | None, password: bytes | None) -> Role | None:
        """The role of a user whose password matches, else None."""
        if username is None or password is None:
            return None
        known = self._users.get(username)
        # Compared against something even for an unknown user, so both take about as long.
        expected, role = known if known is not None else (secrets.token_bytes(16), None)
        if hmac.compare_digest(password, expected) and role is not None:
            return role
        return None

    def authenticate(self, username: str | None, password: bytes | None) -> bool:
        """For the broker's CONNECT: any known user with the right password."""
        return self.role(username, password) is not None

    def device_users(self) -> list[str]:
        return sorted(u for u, (_, role) in self._users.items() if role == "device")


@dataclass(frozen=True, slots=True)
class Registration:
    id: str
    status: Status
    created: str  # ISO 8601
    username: str | None = None  # the device user, once credentials were handed out


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    tenant: str
    username: str  # without the tenant prefix, as `70` and deviceCredentials carry it
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"DeviceCredentials(tenant={self.tenant!r}, username={self.username!r})"


class Registrations:
    """The Device registration list of the one tenant."""

    def __init__(self, tenant: str, accounts: Accounts) -> None:
        self.tenant = tenant
        self.accounts = accounts
        self._items: dict[str, Registration] = {}
        self._issued: dict[str, DeviceCredentials] = {}
        # One-time passwords for certificate enrolment (EST), used up by a successful enrol.
        self._one_time: dict[str, str] = {}
        self._ca: SandboxCa | None = None
        self.version = 0  # bumped on every change, for the status page

    def entries(self) -> list[Registration]:
        return list(self._items.values())

    def get(self, device_id: str) -> Registration | None:
        return self._items.get(device_id)

    def register(self, device_id: str, one_time_password: str | None = None) -> Registration:
        """Step 1: the operator enters the device ID (with a one-time password for the
        certificate authority, if the device enrols a certificate over EST)."""
        device_id = device_id.strip()
        if not device_id or ":" in device_id or len(device_id) > 128:
            raise RegistrationError(
                422, "a device ID is 1 to 128 characters without ':' (it is the MQTT client id)")
        if device_id in self._items:
            raise RegistrationError(409, f"device {device_id} is registered already")
        if len(self._items) >= MAX_REGISTRATIONS:
            raise RegistrationError(422, f"at most {MAX_REGISTRATIONS} registrations")
        created = datetime.now(UTC).isoformat(timespec="milliseconds")
        item = Registration(device_id, "WAITING_FOR_CONNECTION", created)
        self._items[device_id] = item
        if one_time_password:
            self._one_time[device_id] = one_time_password
        self.version += 1
        log.info("device registration: %s waiting for connection", device_id)
        return item

    def accept(self, device_id: str) -> Registration:
        """Step 3: the operator clicks Accept on a request that is pending acceptance."""
        item = self._items.get(device_id)
        if item is None:
            raise RegistrationError(404, f"no registration for device {device_id}")
        if item.status == "WAITING_FOR_CONNECTION":
            raise RegistrationError(
                422, f"device {device_id} has not asked for credentials yet (status "
                     "WAITING_FOR_CONNECTION): start `dashkanban register` on the gateway first")
        if item.status == "PENDING_ACCEPTANCE":
            item = self._items[device_id] = replace(item, status="ACCEPTED")
            self.version += 1
            log.info("device registration: %s accepted", device_id)
        return item

    def request(self, device_id: str) -> DeviceCredentials | None:
        """Step 2 and 3, the device's side: its credentials once accepted, else None.

        An unregistered ID is ignored, as the platform ignores it: the operator registers first.
        """
        item = self._items.get(device_id)
        if item is None:
            log.info("device registration: %s asked for credentials but is not registered",
                     device_id)
            return None
        if item.status == "WAITING_FOR_CONNECTION":
            self._items[device_id] = replace(item, status="PENDING_ACCEPTANCE")
            self.version += 1
            log.info("device registration: %s pending acceptance", device_id)
            return None
        if item.status == "PENDING_ACCEPTANCE":
            return None
        issued = self._issued.get(device_id)
        if issued is None:
            # A second request after acceptance gets the same user: the answer may have been
            # lost on the way (the sandbox's choice; docs/sandbox.md).
            username = DEVICE_USER_PREFIX + device_id
            issued = DeviceCredentials(self.tenant, username, secrets.token_urlsafe(18))
            self.accounts.add_device_user(f"{self.tenant}/{username}", issued.password)
            self._issued[device_id] = issued
            self._items[device_id] = replace(item, username=username)
            self.version += 1
            log.info("device registration: %s gets the device user %s/%s", device_id,
                     self.tenant, username)
        return issued

    @property
    def ca(self) -> SandboxCa:
        if self._ca is None:
            from dashkanban.sandbox.ca import SandboxCa

            self._ca = SandboxCa(self.tenant)
        return self._ca

    def enrol(self, device_id: str, one_time_password: str, csr_der: bytes) -> list[bytes]:
        """EST simpleenroll: the signed certificate and the CA's, as PEM, for a registered ID
        whose one-time password matches; the password is then used up."""
        from cryptography import x509

        from dashkanban.sandbox.ca import common_name

        expected = self._one_time.get(device_id)
        if expected is None or not hmac.compare_digest(expected.encode(),
                                                       one_time_password.encode()):
            raise RegistrationError(401, "no registration with this device ID and one-time "
                                         "password")
        try:
            csr = x509.load_der_x509_csr(csr_der)
        except ValueError:
            raise RegistrationError(400, "the body is no PKCS#10 certificate request") from None
        if not csr.is_signature_valid:
            raise RegistrationError(400, "the certificate request's signature is not valid")
        if common_name(csr) != device_id:
            raise RegistrationError(422, f"the certificate request's CN must be the device ID "
                                         f"{device_id}")
        certificate = self.ca.sign(csr)
        del self._one_time[device_id]
        item = self._items.get(device_id)
        if item is not None:
            self._items[device_id] = replace(item, status="ACCEPTED")
        self.version += 1
        log.info("certificate authority: signed a certificate for %s", device_id)
        from cryptography.hazmat.primitives import serialization

        return [certificate.public_bytes(serialization.Encoding.PEM), self.ca.pem]

    def reenrol(self, device_id: str, csr_der: bytes) -> list[bytes]:
        """EST simplereenroll for a device already authenticated as `device_id` (its JWT or its
        device user): a new certificate with the same CN, from the same CA, as PEM with the CA's.
        The CSR may carry the same key or a new one (RFC 7030 4.2.2: renew or rekey)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from dashkanban.sandbox.ca import common_name

        try:
            csr = x509.load_der_x509_csr(csr_der)
        except ValueError:
            raise RegistrationError(400, "the body is no PKCS#10 certificate request") from None
        if not csr.is_signature_valid:
            raise RegistrationError(400, "the certificate request's signature is not valid")
        if common_name(csr) != device_id:
            # [unverified] the platform's answer to a CN that is not the caller's.
            raise RegistrationError(403, f"the certificate request's CN must be the device ID "
                                         f"{device_id}")
        certificate = self.ca.sign(csr)
        self.version += 1
        log.info("certificate authority: renewed the certificate of %s", device_id)
        return [certificate.public_bytes(serialization.Encoding.PEM), self.ca.pem]

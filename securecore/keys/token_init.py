"""One-time initialisation of a PKCS#11 token through the API, never a command line.

softhsm2-util and pkcs11-tool take the PINs of a new token as arguments (or
from a terminal), where every local user reads them in /proc/PID/cmdline
while the tool runs. Here the PINs stay in
this process's memory: C_InitToken (which python-pkcs11 does not offer) is
called through the PKCS#11 module's function list, then C_InitPIN in a
security officer session through python-pkcs11.

This file depends on nothing but the standard library and python-pkcs11:
roles/hsm's `pkcs11_token` module uses it as a module_utils file (a link to
this one) on hosts that have only python-pkcs11, and `securecore-lab init` uses
it for development tokens.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import pkcs11

if TYPE_CHECKING:
    # pkcs11.lib is the function that loads a library; this is the class it returns.
    from pkcs11 import _pkcs11

CKR_OK = 0
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
RESULT_NAMES = {
    0x3: "CKR_SLOT_ID_INVALID",
    0x5: "CKR_GENERAL_ERROR",
    0x20: "CKR_DEVICE_ERROR",
    0xA0: "CKR_PIN_INCORRECT",
    0xA2: "CKR_PIN_LEN_RANGE",
    0xA4: "CKR_PIN_LOCKED",
    0xB3: "CKR_SESSION_EXISTS",
    0xE0: "CKR_TOKEN_NOT_PRESENT",
    0xE2: "CKR_TOKEN_WRITE_PROTECTED",
}
# CK_FUNCTION_LIST: the interface version, then the functions in the order of
# the standard, C_InitToken tenth.
FUNCTIONS = (
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
)


# Not a SecureCoreError: this module is also an Ansible module_util (roles/hsm), run on
# hosts where the securecore package is not installed, so it imports nothing of it.
class TokenInitError(Exception):
    """The token could not be initialised (the message names the step; never a PIN)."""


class _FunctionList(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)] + [
        (name, ctypes.c_void_p) for name in FUNCTIONS
    ]


def _checked(step: str, result: int, *accepted: int) -> None:
    if result not in (CKR_OK, *accepted):
        raise TokenInitError(f"{step}: {RESULT_NAMES.get(result, hex(result))}")


def _init_token(module_path: str, slot_id: int, label: str, so_pin: str) -> None:
    # The library python-pkcs11 loaded: dlopen gives back the same, already
    # initialised instance (C_Initialize then answers "already initialised").
    library = ctypes.CDLL(module_path)
    get_function_list = library.C_GetFunctionList
    get_function_list.restype = ctypes.c_ulong
    get_function_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
    functions = ctypes.POINTER(_FunctionList)()
    _checked("C_GetFunctionList", get_function_list(ctypes.byref(functions)))
    initialize = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)(functions.contents.C_Initialize)
    _checked("C_Initialize", initialize(None), CKR_CRYPTOKI_ALREADY_INITIALIZED)
    init_token = ctypes.CFUNCTYPE(
        ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p
    )(functions.contents.C_InitToken)
    pin = so_pin.encode()
    padded_label = label.encode().ljust(32, b" ")  # CK_UTF8CHAR[32], blank-padded
    _checked("C_InitToken", init_token(slot_id, pin, len(pin), padded_label))


def free_slot(lib: _pkcs11.lib) -> pkcs11.Slot | None:
    """The first slot whose token is not initialised."""
    for slot in lib.get_slots(token_present=True):
        if not slot.get_token().flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:
            return slot
    return None


def initialise_token(module_path: str, label: str, so_pin: str, user_pin: str) -> str:
    """A new token LABEL in the first free slot, its user PIN set; its serial number."""
    if len(label.encode()) > 32:
        raise TokenInitError(f"label {label!r} is longer than 32 bytes")
    lib = pkcs11.lib(module_path)
    slot = free_slot(lib)
    if slot is None:
        raise TokenInitError(f"no free slot to create token {label!r}")
    _init_token(module_path, slot.slot_id, label, so_pin)
    # The slot keeps its id in this process; the new token is opened there as
    # the security officer to set the user PIN.
    try:
        with slot.get_token().open(rw=True, so_pin=so_pin) as session:
            session.init_pin(user_pin)
    except pkcs11.exceptions.PKCS11Error as error:
        raise TokenInitError(
            f"token {label!r} was initialised but its user PIN could not be set "
            f"({type(error).__name__})"
        ) from error
    return slot.get_token().serial.decode().strip()

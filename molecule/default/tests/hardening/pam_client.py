"""A minimal PAM client (ctypes over libpam), copied to a lab host by the tests.

Usage: python3 pam_client.py SERVICE USER auth|chauthtok  (answers on stdin,
one per line, given to the password prompts in order). Exit 0 on success,
otherwise the PAM error code, with pam_strerror on stderr. Runs the real PAM
stack of the host, exactly as login or passwd would.
"""

import ctypes
import ctypes.util
import sys

PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON = 1, 2


class PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class PamResponse(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


CONV = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.POINTER(PamMessage)),
    ctypes.POINTER(ctypes.POINTER(PamResponse)),
    ctypes.c_void_p,
)


class PamConv(ctypes.Structure):
    _fields_ = [("conv", CONV), ("appdata_ptr", ctypes.c_void_p)]


def main():
    service, user, action = sys.argv[1:4]
    answers = [line.rstrip("\n") for line in sys.stdin]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.calloc.restype = ctypes.c_void_p
    libc.strdup.restype = ctypes.c_void_p
    pam = ctypes.CDLL(ctypes.util.find_library("pam"))
    pam.pam_strerror.restype = ctypes.c_char_p

    def converse(count, messages, response, _data):
        block = libc.calloc(count, ctypes.sizeof(PamResponse))
        response[0] = ctypes.cast(block, ctypes.POINTER(PamResponse))
        for i in range(count):
            if messages[i].contents.msg_style in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON):
                answer = answers.pop(0) if answers else ""
                response[0][i].resp = libc.strdup(answer.encode())
        return 0

    conv = PamConv(CONV(converse), None)
    handle = ctypes.c_void_p()
    rc = pam.pam_start(service.encode(), user.encode(), ctypes.byref(conv), ctypes.byref(handle))
    if rc == 0:
        if action == "auth":
            rc = pam.pam_authenticate(handle, 0) or pam.pam_acct_mgmt(handle, 0)
        else:
            rc = pam.pam_chauthtok(handle, 0)
    if rc != 0:
        print(pam.pam_strerror(handle, rc).decode(), file=sys.stderr)
    pam.pam_end(handle, rc)
    sys.exit(rc)


if __name__ == "__main__":
    main()

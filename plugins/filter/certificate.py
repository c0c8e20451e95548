# -*- coding: utf-8 -*-
# gemma-airgap: when a PEM certificate stops being valid.

"""Jinja filter ``certificate_not_after``.

The gateway's certificate comes from the inventory (ansible-vault), so the control node
reads its expiry once per deploy and the target publishes it for Prometheus (the
CertificateExpiring alert). Only the first certificate of a chain counts: it is the one a
client checks first, and a leaf expires before the CA that signed it.

Runs on the control node with ``cryptography``, which ansible-core itself requires.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

try:
    from cryptography import x509
except ImportError:  # pragma: no cover - ansible-core requires it
    x509 = None

# A certificate chain is a few KiB; anything far larger is not one.
PEM_LIMIT = 1024 * 1024


def certificate_not_after(pem):
    """Seconds since the epoch (UTC) at which the first certificate in pem expires."""
    if x509 is None:
        raise AnsibleFilterError("certificate_not_after needs the cryptography package")
    if not isinstance(pem, str) or not pem.strip() or len(pem) > PEM_LIMIT:
        raise AnsibleFilterError("certificate_not_after needs PEM text of at most %d bytes"
                                 % PEM_LIMIT)
    try:
        first = x509.load_pem_x509_certificates(pem.encode("ascii"))[0]
    except (ValueError, UnicodeEncodeError) as error:
        raise AnsibleFilterError("not a PEM certificate: %s" % error) from None
    return int(first.not_valid_after_utc.timestamp())


class FilterModule(object):
    def filters(self):
        return {"certificate_not_after": certificate_not_after}

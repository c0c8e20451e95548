# gemma-airgap: documentation shared by the modules in plugins/modules/.

"""Doc fragments of the gemma-airgap modules.

Every module here behaves the same way towards check mode, diff mode and re-runs, so
that is said once: a module takes it with
``extends_documentation_fragment: [gemma_airgap.ollama.gemma_airgap.attributes]``.
A module that ever differs overrides the one attribute in its own ``attributes:``.
"""


class ModuleDocFragment:
    ATTRIBUTES = r"""
attributes:
  check_mode:
    description:
      - Runs in check mode, reporting whether it would change anything, and changes nothing.
    support: full
  diff_mode:
    description:
      - Returns a diff of what it changed (or would change in check mode).
    support: none
  idempotent:
    description:
      - A second run with the same arguments on an unchanged system reports no change and
        changes nothing.
    support: full
"""

"""OSCAL documents against the OSCAL 1.1 schema: compliance-trestle's model of OSCAL
1.1.3, generated from NIST's JSON schema (no package on the registries ships the schema
file itself). Strict: unknown fields, wrong enumerations, missing required fields and
malformed UUIDs and dates are all refused."""

from __future__ import annotations

from trestle.oscal.assessment_results import Model


def validated(document: dict) -> Model:
    """DOCUMENT (assessment results) as the model; pydantic's ValidationError if the
    schema refuses it."""
    return Model.parse_obj(document)

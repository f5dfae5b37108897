"""The OpenAPI document is complete and valid enough to generate clients from."""

from openapi_spec_validator import validate
from starlette.testclient import TestClient

from imgproxy.options import PARAMS


def test_openapi_document_is_valid_openapi(client: TestClient) -> None:
    validate(client.get("/openapi.json").json())


def test_every_operation_has_a_unique_id_and_documented_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    for route in ("/img/{path}", "/meta/{path}", "/srcset/{path}"):
        for method in ("get", "head"):
            responses = spec["paths"][route][method]["responses"]
            assert responses["404"]["content"].keys() == {"application/problem+json"}
            assert "default" in responses


def test_srcset_documents_its_own_parameters_and_the_image_options(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    names = {p["name"] for p in spec["paths"]["/srcset/{path}"]["get"]["parameters"]}
    assert {"w", "widths", "sizes", "alt", "fm", "q", "blur"} <= names
    assert not {"fit", "h", "crop", "rot"} & names  # they would change a candidate's width
    image_names = {p["name"] for p in spec["paths"]["/img/{path}"]["get"]["parameters"]}
    assert {param.name for param in PARAMS} <= image_names

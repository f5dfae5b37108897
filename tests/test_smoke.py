from starlette.testclient import TestClient

from tests.conftest import decode


def test_resize_webp(client: TestClient) -> None:
    response = client.get("/img/chelsea.png?w=100", headers={"Accept": "image/webp"})
    assert response.status_code == 200
    image = decode(response.content)
    assert (image.format, image.size) == ("WEBP", (100, 67))

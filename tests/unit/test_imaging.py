"""The image facts of pulls, pushes, tags, imports and noted actions (given/when/then)."""

from __future__ import annotations

from commands import schema as c
from events import model as e
from events.specs import ImageConfig
from tests.unit.test_decide import IMAGE_ID, OTHER_IMAGE_ID, create, given

DIGEST = "sha256:" + "d" * 64


def test_pull_records_the_repository_digest_and_resolves_by_it() -> None:
    pulled = c.RegisterImage(image_id=OTHER_IMAGE_ID, repo_tags=("reg:5000/app:v1",),
                             config=ImageConfig(cmd=("sh",)),
                             origin="pull", source_ref="reg:5000/app:v1",
                             repo_digests=(f"reg:5000/app@{DIGEST}",))
    got = given().when(pulled).then(e.ImageRegistered(
        image_id=OTHER_IMAGE_ID, repo_tags=("reg:5000/app:v1",), origin="pull",
        config=ImageConfig(cmd=("sh",)),
        repo_digests=(f"reg:5000/app@{DIGEST}",), ref="reg:5000/app:v1"))
    assert got.world.images[OTHER_IMAGE_ID].repo_digests == (f"reg:5000/app@{DIGEST}",)
    got.scenario.when(create(image=f"reg:5000/app@{DIGEST}")).then(e.ContainerCreated)


def test_import_is_the_image_then_a_tag_per_reference() -> None:
    got = given().when(c.RegisterImage(image_id=OTHER_IMAGE_ID, repo_tags=("imp",),
                                       origin="import"))
    got.then(e.ImageRegistered(image_id=OTHER_IMAGE_ID, origin="import"),
             e.ImageTagged(image_id=OTHER_IMAGE_ID, tag="imp:latest"))
    given().when(c.RegisterImage(image_id=OTHER_IMAGE_ID, origin="bogus")).then(
        (400, "unknown image origin 'bogus'"))


def test_tag_moves_the_reference_and_refuses_digests() -> None:
    got = given().when(c.TagImage(ref="busybox", tag="reg:5000/box:v2")).then(
        e.ImageTagged(image_id=IMAGE_ID, tag="reg:5000/box:v2"))
    assert got.world.tags["reg:5000/box:v2"] == IMAGE_ID
    given().when(c.TagImage(ref="nope", tag="x")).then((404, "No such image: nope:latest"))


def test_push_adds_the_repository_digest() -> None:
    got = given().when(c.RecordImagePush(ref="busybox", pushed="reg:5000/box:v2",
                                         repo_digest=f"reg:5000/box@{DIGEST}"))
    got.then(e.ImagePushed(image_id=IMAGE_ID, ref="reg:5000/box:v2",
                           repo_digest=f"reg:5000/box@{DIGEST}"))
    assert got.world.images[IMAGE_ID].repo_digests == (f"reg:5000/box@{DIGEST}",)


def test_noted_image_actions() -> None:
    given().when(c.NoteImageAction(action="save", ref="busybox")).then(
        e.ImageActionNoted(action="save", image_id=IMAGE_ID))
    given().when(c.NoteImageAction(action="prune", attributes={"reclaimed": "7"})).then(
        e.ImageActionNoted(action="prune", attributes={"reclaimed": "7"}))
    given().when(c.NoteImageAction(action="pull")).then(
        (400, "unknown image action 'pull': expected one of prune, save"))


def test_rmi_by_id_of_an_image_in_two_repositories_needs_force() -> None:
    two = c.TagImage(ref="busybox", tag="other:1")
    given(two).when(c.RemoveImage(ref=IMAGE_ID)).then(
        (409, f"conflict: unable to delete {IMAGE_ID[7:19]} (must be forced) - image is "
              "referenced in multiple repositories"))
    given(two).when(c.RemoveImage(ref=IMAGE_ID, force=True)).then(
        e.ImageRemoved(image_id=IMAGE_ID, untagged=("busybox:latest",), deleted=False),
        e.ImageRemoved(image_id=IMAGE_ID, untagged=("other:1",), deleted=False),
        e.ImageRemoved(image_id=IMAGE_ID, deleted=True))

import torch

from derm.augment import POLICIES, AugmentPolicy, augment_batch


def blob_batch(n=8, h=60, w=80):
    """Off-centre ellipses: any misalignment between image and mask shows up."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.stack([(((yy - 20 - i) / 10) ** 2 + ((xx - 25 - 2 * i) / 18) ** 2 <= 1).float() for i in range(n)])
    return masks[:, None].repeat(1, 3, 1, 1), masks[:, None]


def test_geometry_moves_image_and_mask_together():
    images, masks = blob_batch()
    policy = AugmentPolicy(brightness=0, contrast=0, saturation=0, hue=0)
    out_images, out_masks = augment_batch(images, policy, masks=masks, gen=torch.Generator().manual_seed(1))
    assert not torch.equal(out_masks, masks)  # something moved
    agreement = ((out_images.mean(1, keepdim=True) > 0.5) == (out_masks > 0.5)).float().mean()
    assert agreement > 0.995
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}


def test_rotation_is_rigid_on_non_square_images():
    _, masks = blob_batch(n=1)
    policy = AugmentPolicy(False, False, 90.0, (1.0, 1.0), 0, 0, 0, 0)
    _, rotated = augment_batch(masks.repeat(1, 3, 1, 1), policy, masks=masks, gen=torch.Generator().manual_seed(3))
    assert abs(rotated.sum() - masks.sum()) / masks.sum() < 0.05  # area kept: no aspect distortion


def test_reference_policy_leaves_nv_untouched():
    images = torch.rand(4, 3, 20, 30)
    labels = torch.tensor([5, 5, 0, 1])  # NV, NV, AKIEC, BCC
    out, _ = augment_batch(images.clone(), POLICIES["reference"], labels=labels, gen=torch.Generator().manual_seed(0))
    assert torch.allclose(out[:2], images[:2], atol=1e-5)
    assert not torch.allclose(out[2:], images[2:], atol=1e-3)


def test_colour_jitter_stays_in_range():
    out, _ = augment_batch(torch.rand(6, 3, 16, 16), POLICIES["full"], gen=torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1

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


def test_device_policy_changes_white_balance_per_image():
    """Each image gets its own colour cast, so the net cannot learn one device's colours as a class cue."""
    grey = torch.full((16, 3, 12, 16), 0.5)
    out, _ = augment_batch(grey, POLICIES["device"], gen=torch.Generator().manual_seed(0))
    channel_ratio = out[:, 1].mean((1, 2)) / out[:, 0].mean((1, 2))  # G / R per image
    assert channel_ratio.std() > 0.05
    assert out.min() >= 0 and out.max() <= 1


def test_vignette_darkens_corners_not_centre():
    policy = AugmentPolicy(False, False, 0.0, (1.0, 1.0), 0, 0, 0, 0, vignette_p=1.0)
    out, _ = augment_batch(torch.ones(32, 3, 60, 80), policy, gen=torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, :, 30, 40], torch.ones(32, 3), atol=1e-3)
    assert (out[:, :, 0, 0] <= out[:, :, 30, 40]).all()
    assert out[:, :, 0, 0].mean() < 0.7  # most frames reach into the corners


def test_blur_keeps_brightness_and_softens_edges():
    from derm.augment import gaussian_blur
    edge = torch.zeros(1, 3, 20, 20)
    edge[..., 10:] = 1.0
    soft = gaussian_blur(edge, 1.0)
    assert abs(soft.mean() - edge.mean()) < 1e-3
    assert 0.05 < soft[0, 0, 5, 10] < 0.95  # the step is now a ramp


def test_aspect_zoom_stretches_one_axis_against_the_other():
    _, masks = blob_batch(n=1)
    policy = AugmentPolicy(False, False, 0.0, (1.0, 1.0), 0, 0, 0, 0, aspect=0.3)
    _, out = augment_batch(masks.repeat(4, 3, 1, 1), policy, masks=masks.repeat(4, 1, 1, 1),
                           gen=torch.Generator().manual_seed(2))
    widths = out[:, 0].amax(1).sum(-1)  # columns the blob covers
    heights = out[:, 0].amax(2).sum(-1)
    assert (widths / heights).std() > 0.05  # the blob's shape differs between images

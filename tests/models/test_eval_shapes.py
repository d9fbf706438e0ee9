"""The learning-evidence measures themselves: caption parsing and dominant colour."""
from hydra_dist.train.evaluation import dominant_colour, parse_caption
from hydra_dist.data.collate import image_to_tensor
from hydra_dist.data.synthetic import make_sample


def test_parse_caption():
    assert parse_caption("a red circle at the top left on blue") == {"fg": "red", "shape": "circle", "bg": "blue"}
    assert parse_caption("a red") == {"fg": "red", "shape": None, "bg": None}
    assert parse_caption("") == {"fg": None, "shape": None, "bg": None}


def test_dominant_colour_is_the_background_of_real_samples():
    for i in range(20):
        img, _, attrs = make_sample(i, 3, 32)
        assert dominant_colour(image_to_tensor(img, 32)) == attrs["bg"]

"""The demo's own description of itself matches what it runs."""

from jepa_fast import demo


def test_the_demo_states_its_data_and_training_budget():
    assert sum(demo.DATA.sizes.values()) == 6_400  # the small preset's seven splits
    # 3,072 train trajectories of 17 frames; ours-small: 6 epochs of 3,072 // 64 = 48 steps of 64 trajectories
    assert demo.budget() == "52,224 frames (3,072 trajectories x 17), 6 epochs = 313,344 frames seen"

"""Condition-triggered campaigns (issue 15): capture of [t - pre_s, t + post_s] around events.

`model` is what the cloud sends, `expr` the safe condition language, `buffer` the pre-/post-trigger
rings, `trigger` the mode machine (rising, falling, while, always, hold, interval) and `engine` ties
them to frames and hands finished events on. See docs/campaigns.md.
"""

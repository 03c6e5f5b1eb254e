"""The positive control: could this attack have found a leak in a model of this architecture?"""

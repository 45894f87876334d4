"""Learning across videos: a prior of the human fields trained over many projects (`prior train`),
and its use as the starting point of a new video's fit (`fit --prior`)."""

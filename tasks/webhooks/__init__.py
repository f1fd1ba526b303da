"""VideoSDK's webhooks: verified (:mod:`.keys`), applied to job records (:mod:`.receiver`), and
served over HTTP (:mod:`.app`)."""

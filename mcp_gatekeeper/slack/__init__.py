"""Decisions from Slack: an interactive message per held call, and the endpoint its buttons call.

* :mod:`.message`: the Block Kit messages (held, decided) and the buttons' values;
* :mod:`.signature`: Slack's v0 request signature and its replay window;
* :mod:`.webapi`: the few Web API methods used (``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``);
* :mod:`.reviewers`: who a Slack user is as a reviewer (an allow-list in the config today);
* :mod:`.notifier`: the notification channel, and the follower that updates a message once its call is decided
  anywhere (page, CLI, Slack, timeout);
* :mod:`.interactions`: ``POST /slack/interactions`` on the approval page's server.
"""

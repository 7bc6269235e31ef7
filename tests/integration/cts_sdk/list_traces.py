"""Run by the Huawei Cloud SDK's own interpreter: one CTS call, its answer as JSON on stdout.

Input on stdin: {"endpoint", "ak", "sk", "project", "call": "traces" | "trackers", "params"}.
Output: {"ok": <the response's to_dict()>} or {"status", "error_code", "error_msg"}.
"""

import json
import sys

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException, ServerResponseException
from huaweicloudsdkcts.v3 import CtsClient, ListTracesRequest, ListTrackersRequest


def main() -> None:
    args = json.load(sys.stdin)
    credentials = BasicCredentials(args["ak"], args["sk"], args["project"])
    client = CtsClient.new_builder().with_credentials(credentials).with_endpoints([args["endpoint"]]).build()
    params = args.get("params", {})
    try:
        if args["call"] == "traces":
            if "from" in params:
                params["_from"] = params.pop("from")
            response = client.list_traces(ListTracesRequest(**params))
        else:
            response = client.list_trackers(ListTrackersRequest(**params))
    except (ClientRequestException, ServerResponseException) as exc:
        print(
            json.dumps({"status": exc.status_code, "error_code": exc.error_code, "error_msg": exc.error_msg})
        )
        return
    print(json.dumps({"ok": response.to_dict()}, default=str))


main()

"""The GraphQL documents `trigger.py` sends: the whole contract with the Dagster webserver.

Tests validate each against the schema of the pinned dagster-graphql, so an upgrade that renames a field fails
there. Every union result asks for `__typename` and reads `message` through the `Error` interface, so an error
type added to a union later still reads cleanly.
"""

_RUN_FIELDS = """
fragment RunFields on Run {
  runId status jobName creationTime startTime endTime
  tags { key value }
}
"""

_METADATA_FIELDS = """
fragment MetadataFields on MetadataEntry {
  __typename label
  ... on FloatMetadataEntry { floatValue floatRepr }
  ... on IntMetadataEntry { intRepr }
  ... on BoolMetadataEntry { boolValue }
  ... on TextMetadataEntry { text }
  ... on PathMetadataEntry { path }
  ... on UrlMetadataEntry { url }
  ... on JsonMetadataEntry { jsonString }
  ... on MarkdownMetadataEntry { mdStr }
  ... on TimestampMetadataEntry { timestamp }
}
"""

ADD_DYNAMIC_PARTITION = """
mutation AddDynamicPartition($partitionKey: String!, $partitionsDefName: String!,
                             $repositorySelector: RepositorySelector!) {
  addDynamicPartition(partitionKey: $partitionKey, partitionsDefName: $partitionsDefName,
                      repositorySelector: $repositorySelector) {
    __typename
    ... on Error { message }
  }
}
"""

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid {
      errors {
        message
        stack { entries { __typename ... on EvaluationStackPathEntry { fieldName }
                                     ... on EvaluationStackListItemEntry { listIndex } } }
      }
    }
    ... on Error { message }
  }
}
"""

RUN_STATUS = (
    """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { ...RunFields }
    ... on Error { message }
  }
}
"""
    + _RUN_FIELDS
)

RUN_RESULT = (
    """
query RunResult($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      ...RunFields
      assetChecks { name assetKey { path } }
      assetMaterializations { assetKey { path } partition metadataEntries { ...MetadataFields } }
    }
    ... on Error { message }
  }
}
"""
    + _RUN_FIELDS
    + _METADATA_FIELDS
)

RUN_LOGS = """
query RunLogs($runId: ID!, $afterCursor: String, $limit: Int) {
  logsForRun(runId: $runId, afterCursor: $afterCursor, limit: $limit) {
    __typename
    ... on EventConnection {
      cursor hasMore
      events {
        __typename
        ... on MessageEvent { message timestamp level stepKey eventType }
        ... on ErrorEvent { error { message } }
      }
    }
    ... on Error { message }
  }
}
"""

# Only what `result` needs from the event log: check evaluations (no other query ties them to one run) and the
# failures that explain a run that did not succeed.
RUN_OUTCOME_EVENTS = (
    """
query RunOutcomeEvents($runId: ID!, $afterCursor: String, $limit: Int) {
  logsForRun(runId: $runId, afterCursor: $afterCursor, limit: $limit) {
    __typename
    ... on EventConnection {
      cursor hasMore
      events {
        __typename
        ... on AssetCheckEvaluationEvent {
          evaluation {
            checkName assetKey { path } success severity description
            metadataEntries { ...MetadataFields }
          }
        }
        ... on ExecutionStepFailureEvent { stepKey error { message cause { message } } }
        ... on RunFailureEvent { message }
      }
    }
    ... on Error { message }
  }
}
"""
    + _METADATA_FIELDS
)

LIST_RUNS = (
    """
query ListRuns($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { ...RunFields } }
    ... on Error { message }
  }
}
"""
    + _RUN_FIELDS
)

TERMINATE_RUN = (
    """
mutation TerminateRun($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunSuccess { run { ...RunFields } }
    ... on TerminateRunFailure { message }
    ... on Error { message }
  }
}
"""
    + _RUN_FIELDS
)

DOCUMENTS = {
    "AddDynamicPartition": ADD_DYNAMIC_PARTITION,
    "LaunchRun": LAUNCH_RUN,
    "RunStatus": RUN_STATUS,
    "RunResult": RUN_RESULT,
    "RunLogs": RUN_LOGS,
    "RunOutcomeEvents": RUN_OUTCOME_EVENTS,
    "ListRuns": LIST_RUNS,
    "TerminateRun": TERMINATE_RUN,
}

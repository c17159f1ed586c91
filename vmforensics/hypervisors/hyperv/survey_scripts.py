r"""The reviewed PowerShell script a Hyper-V survey runs, besides the acquirer's HOST and CLOCK.

The conventions are those of :mod:`vmforensics.hypervisors.hyperv.scripts` (whose prelude and
:class:`Script` this module uses): the text is a constant, data arrive only through the base64
JSON variable ``VMFORENSICS_ARGS`` (the inventory takes none), the output is one
``ConvertTo-Json`` document, enumerations and dates are converted to strings in the script, and a
failure prints ``{"vmforensics_error": …}``. Only ``Get-*`` cmdlets are called: a survey changes
nothing on the host.

``INVENTORY`` prints::

    {"host": {"computer_name", "virtual_machine_path", "virtual_hard_disk_path",
              "mac_address_minimum", "mac_address_maximum"},
     "vms": [{"name", "id", "state", "status", "uptime_seconds", "creation_time", "generation",
              "version", "path", "configuration_location", "snapshot_file_location",
              "smart_paging_file_path", "checkpoint_type", "computer_name", "is_clustered",
              "integration_services_state", "integration_services_version",
              "network_adapters": [{"name", "mac_address", "switch_name",
                                    "dynamic_mac_address_enabled", "connected"}],
              "hard_drives": [{"controller_type", "controller_number", "controller_location",
                               "path", "chain": [{"path", "vhd_format", "vhd_type", "size", "file_size",
                                                  "parent_path", "disk_identifier"} | {"path", "error"}]}],
              "snapshots": [{"id", "name", "snapshot_type", "state", "creation_time",
                             "parent_snapshot_id", "hard_drives": [path]}]}]}

``chain`` lists a disk's VHD and its parents, top first (at most 64; a parent Get-VHD cannot open
ends it with ``error``). ``uptime_seconds`` is 0 for a VM that is not running.
"""

from __future__ import annotations

from vmforensics.hypervisors.hyperv.scripts import VHD_CHAIN_FUNCTION, Script

INVENTORY = Script(
    "survey-inventory",
    r"""$h = Get-VMHost
"""
    + VHD_CHAIN_FUNCTION
    + r"""$vms = @(Get-VM | ForEach-Object {
  $vm = $_
  [ordered]@{ name = $vm.Name; id = $vm.Id.ToString(); state = $vm.State.ToString(); status = $vm.Status
    uptime_seconds = [long]$vm.Uptime.TotalSeconds; creation_time = Iso $vm.CreationTime
    generation = $vm.Generation; version = $vm.Version; path = $vm.Path
    configuration_location = $vm.ConfigurationLocation; snapshot_file_location = $vm.SnapshotFileLocation
    smart_paging_file_path = $vm.SmartPagingFilePath; checkpoint_type = $vm.CheckpointType.ToString()
    computer_name = $vm.ComputerName; is_clustered = $vm.IsClustered
    integration_services_state = $vm.IntegrationServicesState
    integration_services_version = "$($vm.IntegrationServicesVersion)"
    network_adapters = @(Get-VMNetworkAdapter -VM $vm | ForEach-Object { [ordered]@{ name = $_.Name
      mac_address = $_.MacAddress; switch_name = $_.SwitchName
      dynamic_mac_address_enabled = $_.DynamicMacAddressEnabled; connected = $_.Connected } })
    hard_drives = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object { [ordered]@{
      controller_type = $_.ControllerType.ToString(); controller_number = $_.ControllerNumber
      controller_location = $_.ControllerLocation; path = $_.Path; chain = @(Chain $_.Path) } })
    snapshots = @(Get-VMSnapshot -VM $vm | ForEach-Object { [ordered]@{ id = $_.Id.ToString(); name = $_.Name
      snapshot_type = $_.SnapshotType.ToString(); state = $_.State.ToString(); creation_time = Iso $_.CreationTime
      parent_snapshot_id = $(if ($_.ParentSnapshotId) { $_.ParentSnapshotId.ToString() } else { $null })
      hard_drives = @($_.HardDrives | ForEach-Object { $_.Path }) } }) }
})
Emit ([ordered]@{ host = [ordered]@{ computer_name = $env:COMPUTERNAME
    virtual_machine_path = $h.VirtualMachinePath; virtual_hard_disk_path = $h.VirtualHardDiskPath
    mac_address_minimum = $h.MacAddressMinimum; mac_address_maximum = $h.MacAddressMaximum }
  vms = $vms })
""",
)

#: Every script of this module, by name (the survey also runs the acquirer's HOST and CLOCK).
ALL: dict[str, Script] = {s.name: s for s in (INVENTORY,)}

-- vwire.lua: Wireshark/tshark dissector for the VirtualWire connector format
-- (docs/wire-format.md). A UDP payload to port 4795 is a 4-byte connector ID
-- in network byte order (field `vwire.connector`) followed by the complete
-- inner Ethernet frame without FCS, which is handed to the Ethernet
-- dissector. Info column: "Connector <id>, <inner info>". VXLAN (UDP 4789,
-- field `vxlan.vni`) is decoded by Wireshark itself.
--
-- tshark:
--   tshark -X lua_script:docs/wireshark/vwire.lua -r cap.pcap -V
--   tshark -X lua_script:docs/wireshark/vwire.lua -r cap.pcap \
--          -T fields -e vwire.connector -e vxlan.vni -e ip.src -e ip.dst
-- Fabric started with --vwire-port 4800:
--   tshark -X lua_script:docs/wireshark/vwire.lua -o vwire.udp_port:4800 -r cap.pcap
--   (or keep 4795 and add a port: -d udp.port==4800,vwire)
--
-- Wireshark GUI: `wireshark -X lua_script:docs/wireshark/vwire.lua`, or copy
-- this file into the personal Lua plugins folder (Help > About Wireshark >
-- Folders > "Personal Lua Plugins", normally ~/.local/lib/wireshark/plugins/)
-- and restart (or Analyze > Reload Lua Plugins). Not both: loading the file
-- twice fails with "there cannot be two protocols with the same description".
-- The port preference is under Edit > Preferences > Protocols > VWIRE.
--
-- Root: Debian/Ubuntu builds print 'Running as user "root" ... dangerous.'
-- and still load the script (init.lua: run_user_scripts_when_superuser =
-- true). Where that is false, run as an ordinary user on readable copies:
--   cp docs/wireshark/vwire.lua cap.pcap /tmp/ && chmod 644 /tmp/vwire.lua /tmp/cap.pcap
--   runuser -u nobody -- tshark -X lua_script:/tmp/vwire.lua -r /tmp/cap.pcap

local vwire = Proto("vwire", "VirtualWire connector")

local DEFAULT_PORT = 4795
local HEADER_LEN = 4

local f_connector = ProtoField.uint32("vwire.connector", "Connector ID", base.DEC_HEX)
vwire.fields = { f_connector }

local e_truncated = ProtoExpert.new("vwire.truncated", "vwire header truncated",
                                    expert.group.MALFORMED, expert.severity.ERROR)
vwire.experts = { e_truncated }

vwire.prefs.udp_port = Pref.uint("UDP port", DEFAULT_PORT,
    "UDP destination port of the vwire format (fabric option --vwire-port)")

local eth = Dissector.get("eth_withoutfcs")
local udp_table = DissectorTable.get("udp.port")
local registered_port = DEFAULT_PORT

function vwire.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    pinfo.cols.protocol:set("vwire")

    if len < HEADER_LEN then
        local t = tree:add(vwire, tvb())
        t:add_proto_expert_info(e_truncated)
        pinfo.cols.info:set("vwire, truncated header")
        return len
    end

    local id = tvb(0, 4):uint()
    local t = tree:add(vwire, tvb(0, HEADER_LEN))
    t:append_text(", Connector: " .. id)
    t:add(f_connector, tvb(0, 4))

    pinfo.cols.info:set("Connector " .. id)
    if len > HEADER_LEN then
        -- Keep "Connector N, " in front of whatever the inner dissectors write.
        pinfo.cols.info:append(", ")
        pinfo.cols.info:fence()
        eth:call(tvb(HEADER_LEN):tvb(), pinfo, tree)
    end
    return len
end

function vwire.prefs_changed()
    if vwire.prefs.udp_port ~= registered_port then
        if registered_port ~= 0 then
            udp_table:remove(registered_port, vwire)
        end
        registered_port = vwire.prefs.udp_port
        if registered_port ~= 0 then
            udp_table:add(registered_port, vwire)
        end
    end
end

udp_table:add(DEFAULT_PORT, vwire)
